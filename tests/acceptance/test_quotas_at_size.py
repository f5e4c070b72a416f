"""A real 2,000-entry warmup beside interactive traffic on one limited endpoint (issue 29, item 5:
"a 2,000-entry warmup finishes while interactive traffic sees 0 429s"), every part real: the
production server (`make serve`: gunicorn, four uvicorn workers), `manage.py cache_warmup --file
... --enqueue` (one `aigen.generate` job per entry on the database queue engine), `manage.py
jobs_worker` processes working the jobs at the `low` admission priority, Redis holding the quota
state, and a loopback provider that enforces its own `rpm_limit` and answers 429 past it
(tests.support.fake_limited).

While the warmup drains, interactive callers (an API token at `normal`, a staff token at `high`)
call `POST /api/ai/generate` on the same endpoint. What holds: the warmup finishes (2,000
generated, 0 failed), interactive callers are all answered (0 429s, 0 503s), the provider answers 0
429s and never receives more than the limit in any window. The interactive p95 wait is printed
(run with -s).

The window is shortened (`QUOTA_WINDOW_SECONDS`), the counts are the issue's.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.support.fake_limited import LimitedOpenAI
from tests.support.fake_openai import MODEL_ID
from tests.support.live_server import ROOT, LiveServer

WINDOW = 6.0
LIMIT = 300
#: The issue's 2,000 entries; QUOTA_WARMUP_ENTRIES runs fewer where the suite's time is short (the
#: jobs are worked at about 8 a second on a busy 2-core box: four minutes for 2,000).
ENTRIES = int(os.environ.get("QUOTA_WARMUP_ENTRIES", "2000"))
JOB_WORKERS = 2
#: Interactive callers per priority, each calling with this pause until the warmup is done.
INTERACTIVE = {"normal": 2, "high": 2}
PAUSE = 0.5


def entries(count: int) -> list[dict]:
    """`count` distinct warmup entries (distinct data: none is a cache hit)."""
    return [{"template_id": "meeting_minutes", "section_id": "1",
             "data": {"meeting": {"title": f"warmup {i}", "date": "2026-12-06", "host": "Ada",
                                  "attendees": ["Grace"]}}} for i in range(count)]


@pytest.fixture
def workdir(tmp_path):
    """The server's folder: in memory where the machine has one (an SQLite run's 2,000 jobs are
    thousands of commits; on a shared disk their syncs, not the gateway, would set the pace)."""
    shm = Path("/dev/shm")
    if not shm.is_dir():
        yield tmp_path
        return
    folder = Path(tempfile.mkdtemp(prefix="quotas-at-size-", dir=shm))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def server(workdir, redis_url):
    with LimitedOpenAI(rpm=LIMIT, window=WINDOW) as provider:
        env = {"OPENAI_API_KEY": "sk-warmup-at-size", "OPENAI_BASE_URL": provider.url, "AI_MODEL": MODEL_ID,
               "REDIS_URL": redis_url, "CACHE_KEY_PREFIX": f"warm{secrets.token_hex(4)}",
               "AI_GENERATE_THROTTLE": "1000000/min", "QUOTA_WINDOW_SECONDS": str(WINDOW)}
        # Before the workers start: a queryset update() bypasses the change notice they watch.
        setup = ("from resilience.models import Endpoint, Upstream\n"
                 "Upstream.objects.filter(name='openai').update(retry_total=0, breaker_enabled=False,"
                 " read_timeout=5, deadline=30, log_sample_rate=0.01, pool_size=64)\n"
                 f"Endpoint.objects.create(upstream=Upstream.objects.get(name='openai'), name='account',"
                 f" base_url={provider.url!r}, rpm_limit={LIMIT})\n")
        with LiveServer(workdir, env=env, workers=4, setup=setup) as live:
            live.token("user")
            live.token("staff", staff=True)  # a staff user's `normal` counts as `high`
            yield live, provider


@contextlib.contextmanager
def jobs_workers(live: LiveServer, logs: Path) -> Iterator[list[subprocess.Popen]]:
    """`manage.py jobs_worker` processes on the server's database and Redis, stopped on exit."""
    files = [open(logs / f"jobs_worker{i}.log", "w") for i in range(JOB_WORKERS)]  # noqa: SIM115
    workers = [subprocess.Popen([sys.executable, "manage.py", "jobs_worker", "--no-scheduler", "--interval",
                                 "0.05", "--worker-id", f"warm{i}"], cwd=ROOT, env=live.env, stdout=log,
                                stderr=subprocess.STDOUT) for i, log in enumerate(files)]
    try:
        yield workers
    finally:
        for worker in workers:
            worker.terminate()
        for worker, log in zip(workers, files, strict=True):
            try:
                worker.wait(timeout=60)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(timeout=10)
            log.close()


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1]


def interactive(live: LiveServer, until: threading.Event) -> dict[str, list[tuple[int, float]]]:
    """Callers at `normal` and `high` generating distinct answers until `until` is set: each
    call's (status, seconds) by priority."""
    tokens = {"normal": live.token("user"), "high": live.token("staff", staff=True)}
    seen: dict[str, list[tuple[int, float]]] = {priority: [] for priority in INTERACTIVE}
    lock = threading.Lock()

    def caller(priority: str, n: int) -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {tokens[priority]}"
        i = 0
        while not until.is_set():
            body = {"template_id": "meeting_minutes", "section_id": "1", "use_cache": False,
                    "data": {"meeting": {"title": f"{priority} {n} {i}", "date": "2026-12-06",
                                         "host": "Ada", "attendees": ["Grace"]}}}
            began = time.monotonic()
            status = session.post(f"{live.url}/api/ai/generate", json=body, timeout=60).status_code
            with lock:
                seen[priority].append((status, time.monotonic() - began))
            i += 1
            until.wait(PAUSE)

    with ThreadPoolExecutor(sum(INTERACTIVE.values())) as pool:
        for priority, count in INTERACTIVE.items():
            for n in range(count):
                pool.submit(caller, priority, n)
    return seen


def test_a_2000_entry_warmup_finishes_beside_interactive_calls_that_see_no_429(server, tmp_path):
    live, provider = server
    warmup_file = tmp_path / "warmup.json"
    warmup_file.write_text(json.dumps(entries(ENTRIES)))
    warmup = subprocess.Popen([sys.executable, "manage.py", "cache_warmup", "--file", str(warmup_file),
                               "--enqueue", "--poll", "0.5"], cwd=ROOT, env=live.env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    lines = []
    for line in warmup.stdout:  # the workers start once the batch is queued: on SQLite a worker's
        lines.append(line)      # claim beside 2,000 inserts meets "database is locked"
        if line.startswith("Queued"):
            break
    done = threading.Event()
    seen: dict[str, list[tuple[int, float]]] = {}
    callers = threading.Thread(target=lambda: seen.update(interactive(live, done)))
    began = time.monotonic()
    with jobs_workers(live, tmp_path) as workers:
        callers.start()
        try:
            out, err = warmup.communicate(timeout=600)
        finally:
            done.set()
            callers.join()
        took = time.monotonic() - began
        alive = all(worker.poll() is None for worker in workers)
    output = "".join(lines) + out
    statuses = {p: sorted({status for status, _ in calls}) for p, calls in seen.items()}
    waits = {p: [seconds for status, seconds in calls if status == 200] for p, calls in seen.items()}
    every = [w for calls in waits.values() for w in calls]
    figures = {p: f"{len(w)} calls, p50 {statistics.median(w):.3f} s, p95 {p95(w):.3f} s"
               for p, w in waits.items()}
    summary = output.strip().splitlines()[-1] if output.strip() else ""
    print(f"\nrpm_limit {LIMIT} per {WINDOW:.0f} s: a {ENTRIES}-entry warmup as jobs ({JOB_WORKERS} workers) "
          f"took {took:.1f} s after queueing ({summary!r}); interactive beside it: {figures}, "
          f"interactive p95 wait {p95(every):.3f} s; the provider received {len(provider.accepted)}, at most "
          f"{provider.max_in_window()} in any window, and answered {provider.refused} 429s")
    assert alive  # no jobs worker died
    assert warmup.returncode == 0, err[-3000:]
    assert f"{ENTRIES} generated, 0 already cached, 0 failed" in output
    assert statuses == {"normal": [200], "high": [200]}, statuses
    assert provider.refused == 0
    assert provider.max_in_window() <= LIMIT
    assert len(provider.accepted) == ENTRIES + len(every)
