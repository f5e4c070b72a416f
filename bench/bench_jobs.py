"""Jobs benchmark: what an enqueue costs and how many jobs one worker runs
per second, on each backend, against baselines measured in the same run.

Backends, each in a process of its own (Django is configured once per process):
- `sqlite`: the database engine (django-tasks-db) on a scratch SQLite file;
- `postgresql`: the same on PostgreSQL, when `BENCH_DATABASE_URL` is set
  (created if missing) or `DATABASE_URL` names a PostgreSQL server (then a
  scratch database `rsl_bench_jobs` on it);
- `rq`: RQ (django-tasks-rq) on `BENCH_REDIS_URL` (default
  redis://127.0.0.1:6379/14), the ledger on the PostgreSQL above if any, else
  on a scratch SQLite file.

Enqueue: `job_enqueue` (the ledger row, then the engine's message, each in its
own autocommit, as a view without a transaction does it) next to the engine's
own enqueue of a bare task and a bare single-row INSERT (database) or a bare
LPUSH (Redis), in short alternating rounds (median of per-round ratios).
Throughput: N no-op jobs worked by one in-process worker until the queue is
empty, next to N bare engine tasks worked by the same worker, alternating.

    .venv/bin/python -m bench.bench_jobs [--jobs N] [--rounds R] [--backends sqlite,postgresql,rq]
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from bench.common import fmt_time, paired_ratio, table

ROOT = Path(__file__).resolve().parent.parent
PAYLOAD = json.dumps({"template_id": "emergency_plan", "section_id": "2", "data": {"n": 1},
                      "use_cache": True, "user_id": 1})


# -- parent: one child process per backend, then the tables ---------------------------------------
def _postgres_url() -> str | None:
    if os.environ.get("BENCH_DATABASE_URL", "").startswith(("postgres://", "postgresql://")):
        return os.environ["BENCH_DATABASE_URL"]
    given = os.environ.get("DATABASE_URL", "")
    if given.startswith(("postgres://", "postgresql://")):
        return urlsplit(given)._replace(path="/rsl_bench_jobs").geturl()
    return None


def _redis_url() -> str:
    return os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")


def _child_env(backend: str, scratch: str) -> tuple[dict[str, str] | None, str]:
    """The child's environment, or None and why the backend is skipped."""
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL", "JOBS_BACKEND")}
    env.update({"LOG_LEVEL": "WARNING", "CALL_LOG_FLUSH_INTERVAL": "0", "DB_CONN_MAX_AGE": "600",
                "DATABASE_URL": f"sqlite:///{scratch}/{backend}.sqlite3"})
    postgres = _postgres_url()
    if backend == "postgresql" or (backend == "rq" and postgres):
        if not postgres:
            return None, "set BENCH_DATABASE_URL (or a PostgreSQL DATABASE_URL)"
        try:
            from bench.bench_stats import _ensure_database

            _ensure_database(postgres)
        except Exception as err:  # no server: say so instead of failing `make bench`
            return None, f"PostgreSQL not reachable ({type(err).__name__})"
        env["DATABASE_URL"] = postgres
    if backend == "rq":
        import redis

        try:
            redis.Redis.from_url(_redis_url(), socket_connect_timeout=1).ping()
        except redis.RedisError as err:
            return None, f"Redis at {_redis_url()} not reachable ({type(err).__name__})"
        env.update({"JOBS_BACKEND": "rq", "JOBS_REDIS_URL": _redis_url()})
    return env, ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300, help="jobs per throughput round (default 300)")
    parser.add_argument("--rounds", type=int, default=5, help="throughput rounds (default 5)")
    parser.add_argument("--backends", default="sqlite,postgresql,rq")
    parser.add_argument("--child", choices=["sqlite", "postgresql", "rq"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, jobs=args.jobs, rounds=args.rounds)), flush=True)
        return 0

    results, skipped = {}, {}
    scratch = tempfile.mkdtemp(prefix="bench-jobs-")
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        env, why = _child_env(backend, scratch)
        if env is None:
            skipped[backend] = why
            continue
        done = subprocess.run([sys.executable, "-m", "bench.bench_jobs", "--child", backend,
                               "--jobs", str(args.jobs), "--rounds", str(args.rounds)],
                              env=env, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            return 1
        results[backend] = json.loads(done.stdout.strip().splitlines()[-1])
    _print(results, skipped, jobs=args.jobs, rounds=args.rounds)
    return 0


def _print(results: dict, skipped: dict, *, jobs: int, rounds: int) -> None:
    rows = []
    for r in results.values():
        label = r["label"]
        rows.append((label, r["baseline_name"], fmt_time(r["baseline"]), "1.00 (baseline)"))
        rows.append(("", r["engine_name"], fmt_time(r["engine"]), f"{r['engine_ratio']:.2f}"))
        rows.append(("", "job_enqueue (ledger row + engine message)", fmt_time(r["enqueue"]),
                     f"{r['enqueue_ratio']:.2f}"))
    table("Jobs: cost of one enqueue (median of paired, alternating rounds)",
          ("backend", "path", "per enqueue", "ratio"), rows)
    rows = []
    for r in results.values():
        for worker in r["workers"]:
            rows.append((r["label"] if worker is r["workers"][0] else "", worker["name"],
                         f"{worker['bare']:.0f}/s", f"{worker['ours']:.0f}/s",
                         f"{worker['ours'] / worker['bare']:.2f}", f"{1e6 / worker['ours']:.0f} µs"))
    table(f"Jobs: no-op jobs per second, one worker (median of {rounds} alternating rounds of {jobs})",
          ("backend", "worker", "bare engine task", "job (ledger + retries + lease)", "ratio",
           "per job"), rows)
    for backend, why in skipped.items():
        print(f"\n{backend}: skipped: {why}")


# -- child: one backend --------------------------------------------------------------------------
@dataclass
class _Backend:
    """One backend's contenders: the bare baseline write, how to empty its queues, its workers."""

    label: str
    baseline_name: str
    engine_name: str
    baseline: Callable[[], None]
    clear_queues: Callable[[], None]
    workers: list[tuple[str, Callable[[], None]]]


def child(backend: str, *, jobs: int, rounds: int) -> dict:
    from bench.common import django_setup

    django_setup()
    from django.db import connection
    from django_tasks_db.models import DBTaskResult

    from bench import jobs_payload
    from resilience.jobs import job_enqueue
    from resilience.jobs.models import Job

    counter = itertools.count()
    ledger = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}[connection.vendor]

    def clear() -> None:
        Job.objects.all().delete()
        DBTaskResult.objects.all().delete()

    def enqueue_job() -> None:
        job_enqueue("bench.jobs_payload.noop", args={"n": next(counter)})

    def enqueue_bare() -> None:
        jobs_payload.bare_noop.enqueue(next(counter))

    clear()
    bench = _rq_backend(ledger) if backend == "rq" else _db_backend(ledger)
    enqueue_ratio, enqueue, base = paired_ratio(enqueue_job, bench.baseline, n=40, rounds=15, warmup=20)
    engine_ratio, engine, _ = paired_ratio(enqueue_bare, bench.baseline, n=40, rounds=15, warmup=20)
    clear()
    bench.clear_queues()

    def clear_all() -> None:
        clear()
        bench.clear_queues()

    measured = [_worker_rates(name, work, enqueue_job, enqueue_bare, clear_all, jobs=jobs, rounds=rounds)
                for name, work in bench.workers]
    return {"label": bench.label, "baseline_name": bench.baseline_name, "engine_name": bench.engine_name,
            "baseline": base, "enqueue": enqueue, "enqueue_ratio": enqueue_ratio,
            "engine": engine, "engine_ratio": engine_ratio, "workers": measured}


def _rq_backend(ledger: str) -> _Backend:
    import django_rq
    import redis
    from django_tasks_rq.backend import Job as RQJob
    from rq import SimpleWorker, Worker

    from resilience.jobs.worker import ALL_QUEUES

    client = redis.Redis.from_url(_redis_url())
    bare_key = "rslbench:jobs:bare"

    def clear_queues() -> None:
        for name in ALL_QUEUES:
            django_rq.get_queue(name).empty()
        client.delete(bare_key)

    def baseline() -> None:
        client.lpush(bare_key, PAYLOAD)

    def rq_worker(worker_class):
        def run() -> None:
            django_rq.get_worker(*ALL_QUEUES, job_class=RQJob, worker_class=worker_class).work(
                burst=True, with_scheduler=False, logging_level="WARNING")
        return run

    clear_queues()
    return _Backend(label=f"RQ on Redis (ledger on {ledger})", baseline_name="bare LPUSH (redis-py)",
                    engine_name="engine only (django-tasks-rq enqueue)", baseline=baseline,
                    clear_queues=clear_queues,
                    workers=[("SimpleWorker (no fork; jobs_worker --batch)", rq_worker(SimpleWorker)),
                             ("Worker (a fork per job; jobs_worker)", rq_worker(Worker))])


def _db_backend(ledger: str) -> _Backend:
    from django.db import connection

    from resilience.jobs.worker import worker_run

    key = "INTEGER PRIMARY KEY AUTOINCREMENT" if connection.vendor == "sqlite" else "BIGSERIAL PRIMARY KEY"
    table_sql = f"CREATE TABLE bench_bare (id {key}, payload TEXT)"
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS bench_bare")
        cursor.execute(table_sql)

    def baseline() -> None:
        with connection.cursor() as cursor:
            cursor.execute("INSERT INTO bench_bare (payload) VALUES (%s)", [PAYLOAD])

    def clear_queues() -> None:
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM bench_bare")

    return _Backend(label=f"database engine on {ledger}",
                    baseline_name=f"bare INSERT of one row ({ledger}, autocommit)",
                    engine_name="engine only (django-tasks-db enqueue)", baseline=baseline,
                    clear_queues=clear_queues,
                    workers=[("jobs_worker (django-tasks-db loop)",
                              lambda: worker_run(batch=True, scheduler=False, interval=0.001))])


def _worker_rates(name: str, work: Callable[[], None], enqueue_job: Callable[[], None],
                  enqueue_bare: Callable[[], None], clear_all: Callable[[], None], *, jobs: int,
                  rounds: int) -> dict:
    """Jobs per second through one worker, ours vs bare engine tasks, in alternating rounds."""
    from resilience.jobs.models import Job

    n = jobs if "fork" not in name or "no fork" in name else max(50, jobs // 3)
    ours, bare = [], []
    for index in range(rounds):
        order = [("ours", enqueue_job), ("bare", enqueue_bare)]
        for kind, put in (order if index % 2 == 0 else order[::-1]):
            for _ in range(n):
                put()
            started = time.perf_counter()
            work()
            took = time.perf_counter() - started
            (ours if kind == "ours" else bare).append(n / took)
            if kind == "ours":
                assert Job.objects.filter(status="done").count() == n, "not every job ran"
            clear_all()
    return {"name": name, "ours": statistics.median(ours), "bare": statistics.median(bare)}


if __name__ == "__main__":
    raise SystemExit(main())
