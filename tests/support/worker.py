"""A worker process for multi-process tests: a real Django process with the
real client, sharing a SQLite file (the policies) and Redis (cache, breaker
state, single-flight locks) with its siblings.

    python -m tests.support.worker setup '{"name": "api", "base_url": ...}'
    python -m tests.support.worker call api /path 3 sync   (then: ready / go <epoch>)
    python -m tests.support.worker watch api read_timeout 5

Each prints one JSON line with its result. The environment (DATABASE_URL,
REDIS_URL, ...) comes from `worker_env()`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.support import migrated

ROOT = Path(__file__).resolve().parents[2]


def run_worker(env: dict[str, str], *args: str, timeout: float = 60,
               module: str = "tests.support.worker") -> dict[str, Any]:
    """Run one worker action to completion; its last output line, parsed."""
    done = subprocess.run([sys.executable, "-m", module, *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def spawn(env: dict[str, str], *args: str, module: str = "tests.support.worker") -> subprocess.Popen:
    """Start one worker action; talk to it with `start_together` and `gather`."""
    return subprocess.Popen([sys.executable, "-m", module, *args], env=env, cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def start_together(procs: list[subprocess.Popen]) -> None:
    """Wait until every process said it is ready, then tell all of them one
    moment to start at."""
    for proc in procs:
        line = proc.stdout.readline()
        assert line and json.loads(line)["ready"], proc.stderr.read()[-3000:]
    go = time.time() + 0.1
    for proc in procs:
        proc.stdin.write(f"go {go}\n")
        proc.stdin.flush()


def gather(procs: list[subprocess.Popen]) -> list[dict]:
    """Each process's last output line, parsed, once it exited cleanly."""
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def worker_env(database_file: str, redis_url: str, **extra: str) -> dict[str, str]:
    """The workers' environment on the SQLite file `database_file`, which starts as a
    copy of the run's migrated schema (tests.support.migrated) when its folder exists
    and no file is there yet: a worker's `migrate` then finds nothing to apply."""
    path = Path(database_file)
    if path.is_absolute() and path.parent.is_dir():
        migrated.sqlite_copy(path)
    env = dict(os.environ)
    env.update({
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "DATABASE_URL": f"sqlite:///{database_file}",
        "REDIS_URL": redis_url,
        "SECRET_KEY": "worker-test-key",
        "DEBUG": "false",
        "CACHE_KEY_PREFIX": "rslmulti",
        "CALL_LOG_FLUSH_INTERVAL": "0",
        "POLICY_CHECK_INTERVAL": "0.2",
        "CACHE_STATS_FLUSH_INTERVAL": "60",
        **extra,
    })
    return env


def _setup(spec: dict[str, Any]) -> dict[str, Any]:
    from django.core.management import call_command

    from resilience.models import Upstream

    call_command("migrate", verbosity=0)
    name = spec.pop("name")
    row, _ = Upstream.objects.get_or_create(name=name, defaults={"base_url": spec["base_url"]})
    for field, value in spec.items():
        setattr(row, field, value)
    row.full_clean()
    row.save()  # autocommit: the post-commit hook bumps the version key now
    return {"saved": name, "at": time.time()}


def _call(name: str, path: str, count: int, start_at: float) -> dict[str, Any]:
    """`count` calls; `start_at` 0 starts at once, otherwise the worker says
    it is ready and waits for a `go <epoch>` line on stdin (processes boot at
    very different speeds on a loaded machine: a fixed head start is a race)."""
    from resilience import exceptions, upstream

    client = upstream(name)  # built (DB read) before the synchronised start
    if start_at:
        print(json.dumps({"ready": True}), flush=True)
        start_at = float(sys.stdin.readline().split()[1])
        time.sleep(max(0.0, start_at - time.time()))
    outcomes = []
    for _ in range(count):
        try:
            response = client.get(path)
            outcomes.append("shared" if getattr(response, "shared", False)
                            else "cache" if response.from_cache else "ok")
        except exceptions.UpstreamError as err:
            outcomes.append(err.code)
    return {"outcomes": outcomes}


def _watch(name: str, field: str, timeout: float) -> dict[str, Any]:
    from resilience import upstream

    client = upstream(name)
    initial = getattr(client.policy, field)
    print(json.dumps({"ready": True, "initial": initial}), flush=True)
    give_up = time.time() + timeout
    while time.time() < give_up:
        value = getattr(client.policy, field)
        if value != initial:
            return {"changed": value, "at": time.time()}
        time.sleep(0.01)
    return {"changed": None, "at": time.time()}


def main(argv: list[str]) -> None:
    import django

    django.setup()
    action, *args = argv
    if action == "setup":
        result = _setup(json.loads(args[0]))
    elif action == "call":
        result = _call(args[0], args[1], int(args[2]), 1.0 if args[3] == "sync" else float(args[3]))
    elif action == "watch":
        result = _watch(args[0], args[1], float(args[2]))
    else:
        raise SystemExit(f"unknown action {action!r}")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
