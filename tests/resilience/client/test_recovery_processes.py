"""An open endpoint breaker probed once across four OS processes (shared
through a real Redis), on a short, doubling, capped wait, and a primary
that recovers back in use within that cap."""
from __future__ import annotations

import json
import threading

import pytest
import redis

from tests.support.fake_upstream import FakeUpstream, Reply
from tests.support.worker import gather, run_worker, spawn, start_together, worker_env

POOL_WORKER = "tests.support.pool_worker"
PROCESSES = 4
FAIL_MAX = 2
PROBE_INTERVAL = 0.1  # the first wait; then 0.2, then the cap
PROBE_CAP = 0.4


@pytest.fixture
def shared(tmp_path, redis_url):
    redis.Redis.from_url(redis_url).flushdb()
    servers = [FakeUpstream().start() for _ in range(2)]
    yield worker_env(str(tmp_path / "recovery.sqlite3"), redis_url), servers
    for server in servers:
        server.stop()
    redis.Redis.from_url(redis_url).flushdb()


def test_an_open_primary_is_probed_once_across_processes_and_used_again_after_it_recovers(shared):
    env, (primary, fallback) = shared
    spec = {"name": "pool", "base_url": primary.url, "endpoint_strategy": "priority", "retry_total": 2,
            "connect_timeout": 0.5, "read_timeout": 3, "deadline": 5, "retry_backoff_factor": 0,
            "retry_jitter": 0, "breaker_fail_max": FAIL_MAX, "breaker_probe_interval": PROBE_INTERVAL,
            "breaker_reset_timeout": PROBE_CAP, "retry_statuses": [429, 500, 502, 503, 504],
            "endpoints": [{"name": "primary", "base_url": primary.url, "priority": 0},
                          {"name": "fallback", "base_url": fallback.url, "priority": 1}]}
    run_worker(env, "setup", json.dumps(spec), module=POOL_WORKER)
    primary.script("/item", Reply(500))
    procs = [spawn(env, "call", "pool", "/item", "3.0", "0.01", module=POOL_WORKER) for _ in range(PROCESSES)]
    start_together(procs)
    # Down for the first 1.5 s of the run (measured from its first request), then healthy.
    flipped = threading.Event()

    def recover_later() -> None:
        while not primary.requests:
            if flipped.wait(0.01):
                return
        if not flipped.wait(1.5):
            primary.script("/item", Reply(200, body={"from": "primary"}))
            flipped.set()

    flipper = threading.Thread(target=recover_later)
    flipper.start()
    outcomes = gather(procs)
    flipped.set()
    flipper.join()
    assert all(set(result["outcomes"]) == {"ok"} for result in outcomes), outcomes
    hits = [r.at for r in primary.requests]
    start = hits[0]
    down = [at - start for at in hits if at - start < 1.5]
    up = [at - start for at in hits if at - start >= 1.5]
    calls = sum(result["outcomes"]["ok"] for result in outcomes)
    # While down: the calls that tripped it (each retried once), then one probe per wait across all
    # processes: waits of 0.1, 0.2, then 0.4 s make at most 5 probes in 1.5 s, never one per process.
    assert len(down) <= (FAIL_MAX + PROCESSES) * 2 + 5 < calls / 10, (down, calls)
    # Recovered: the next probe (at most the 0.4 s cap later, plus a re-read) closes it, and the
    # primary carries the traffic again.
    assert up and up[0] < 1.5 + PROBE_CAP + 0.5, up[:3]
    assert len(up) > len(down)
