"""Jobs across real processes on the database engine (SQLite file or the
PostgreSQL test database): a worker killed mid-job, two schedulers and two
workers sharing one schedule."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from django.db import connection

from tests.support.fake_upstream import FakeUpstream
from tests.support.jobs_cli import jobs_env
from tests.support.worker import ROOT

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def env(tmp_path):
    """A database every process sees: the PostgreSQL test database (committed
    rows, transactional test), or a fresh SQLite file."""
    if connection.vendor == "postgresql":
        s = connection.settings_dict
        url = f"postgres://{s['USER']}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"
        return jobs_env(url)
    environment = jobs_env(f"sqlite:///{tmp_path / 'jobs.sqlite3'}")
    cli(environment, "migrate")
    return environment


def cli(env: dict[str, str], *args: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "tests.support.jobs_cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def worker(env: dict[str, str], *args: str) -> subprocess.Popen:
    code = "import sys, django; django.setup(); import tests.support.jobs; " \
           "from django.core.management import call_command; call_command('jobs_worker', *sys.argv[1:])"
    return subprocess.Popen([sys.executable, "-c", code, "--interval", "0.01", *args], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path, proc: subprocess.Popen) -> None:
    for _ in range(3000):  # bounded: 30 s at most on a loaded machine
        if path.exists():
            return
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.01)
    raise AssertionError(f"{path} never appeared")


def test_a_worker_killed_mid_job_leaves_it_rerun_not_lost(env, tmp_path):
    started, release = tmp_path / "started", tmp_path / "release"
    job_id = cli(env, "enqueue", "tests.support.jobs.blocks",
                 json.dumps({"started": str(started), "release": str(release)}))["id"]
    proc = worker(env, "--no-scheduler")
    try:
        wait_for(started, proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert cli(env, "status", job_id)["status"] == "running"  # the dead worker's claim
    assert cli(env, "reap", "0")["reaped"] == 0  # lease not over yet
    assert cli(env, "reap", "3600")["reaped"] == 1  # an hour later: lost, queued again
    queued = cli(env, "status", job_id)
    assert queued["status"] == "queued" and queued["error"]["code"] == "worker_lost"

    release.write_text("go")
    rerun = worker(env, "--no-scheduler", "--batch")
    _, err = rerun.communicate(timeout=60)
    assert rerun.returncode == 0, err[-3000:]
    assert cli(env, "status", job_id) == {"status": "done", "attempts": 2, "result": "released",
                                          "error": None}


def test_two_schedulers_and_two_workers_probe_once_per_interval(env):
    with FakeUpstream() as fake:
        cli(env, "upstream", "api", fake.url, "/health", "60")
        slots = [str(60 * n + 7) for n in range(1_000_000, 1_000_006)]  # six intervals
        tickers = [subprocess.Popen([sys.executable, "-m", "tests.support.jobs_cli", "tick", *slots],
                                    env=env, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True) for _ in range(2)]
        for proc in tickers:
            line = proc.stdout.readline()
            assert line and json.loads(line)["ready"], proc.stderr.read()[-3000:]
        for proc in tickers:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        queued = []
        for proc in tickers:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err[-3000:]
            keys = json.loads(out.strip().splitlines()[-1])["queued"]
            queued += [k for k in keys if k.startswith("probe:")]
        assert sorted(queued) == sorted(f"probe:api:{int(s) // 60}" for s in slots)  # each slot once

        workers = [worker(env, "--no-scheduler", "--batch") for _ in range(2)]
        for proc in workers:
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err[-3000:]
        state = cli(env, "probes")
        assert state["probes"] == len(slots) == len(fake.requests)  # each probe ran exactly once
        assert {status for _, status in state["jobs"]} == {"done"}
