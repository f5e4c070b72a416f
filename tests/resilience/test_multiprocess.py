"""Several OS processes sharing one breaker, one single-flight and live
policies through a real Redis (and one SQLite file for the policy rows)."""
from __future__ import annotations

import json
import time

import pytest
import redis

from tests.support.fake_upstream import FakeUpstream, Reply
from tests.support.worker import gather, spawn, start_together, worker_env
from tests.support.worker import run_worker as run

PROCESSES = 4


@pytest.fixture
def shared(tmp_path, redis_url):
    """A fake upstream plus the environment every worker process shares."""
    redis.Redis.from_url(redis_url).flushdb()
    env = worker_env(str(tmp_path / "shared.sqlite3"), redis_url)
    with FakeUpstream() as fake:
        yield fake, env
    redis.Redis.from_url(redis_url).flushdb()


def setup_upstream(env: dict[str, str], fake: FakeUpstream, **policy) -> None:
    spec = {"name": "api", "base_url": fake.url, "retry_total": 0, "connect_timeout": 0.5,
            "read_timeout": 3, "deadline": 5, "retry_backoff_factor": 0, "retry_jitter": 0, **policy}
    run(env, "setup", json.dumps(spec))


def call_together(env: dict[str, str], path: str, count: int) -> list[list[str]]:
    """Every process boots and builds its client, then all start at once."""
    procs = [spawn(env, "call", "api", path, str(count), "sync") for _ in range(PROCESSES)]
    start_together(procs)
    return [r["outcomes"] for r in gather(procs)]


def test_processes_failing_together_open_the_breaker_once_at_the_threshold(shared):
    fake, env = shared
    setup_upstream(env, fake, breaker_fail_max=5, breaker_reset_timeout=60)
    fake.script("/down", Reply(500, delay=0.05))
    outcomes = [o for per_process in call_together(env, "/down", 5) for o in per_process]
    assert len(outcomes) == PROCESSES * 5
    # The shared count reached 5 once; calls already in flight then may land
    # (at most one per other process), everything after is refused at once.
    assert 5 <= fake.count("/down") <= 5 + PROCESSES - 1
    assert outcomes.count("breaker_open") == len(outcomes) - fake.count("/down")
    trips = [e for e in _breaker_events(env) if e["to_state"] == "open"]
    assert len(trips) == 1


def test_half_open_lets_the_configured_probes_through_across_processes(shared):
    fake, env = shared
    setup_upstream(env, fake, breaker_fail_max=1, breaker_reset_timeout=1.0, breaker_half_open_max=1)
    fake.script("/x", Reply(500))
    run(env, "call", "api", "/x", "1", "0")
    assert fake.count("/x") == 1
    fake.script("/x", Reply(200, delay=0.5))  # a slow probe keeps its slot taken
    time.sleep(1.0)  # the breaker's reset timeout (it runs on wall time in other processes)
    results = call_together(env, "/x", 1)
    flat = [o for r in results for o in r]
    assert flat.count("ok") == 1
    assert flat.count("breaker_open") == PROCESSES - 1
    assert fake.count("/x") == 2


def test_single_flight_across_processes(shared):
    fake, env = shared
    setup_upstream(env, fake, cache_ttl=60, single_flight=True)
    fake.script("/popular", Reply(200, body={"v": 1}, delay=0.4))
    results = call_together(env, "/popular", 1)
    assert fake.count("/popular") == 1
    assert sorted(o for r in results for o in r) == ["ok"] + ["shared"] * (PROCESSES - 1)


def test_a_policy_change_reaches_another_process_within_a_second(shared):
    fake, env = shared
    env = {**env, "POLICY_CHECK_INTERVAL": "1.0"}
    setup_upstream(env, fake, read_timeout=3)
    watcher = spawn(env, "watch", "api", "read_timeout", "10")
    assert json.loads(watcher.stdout.readline())["ready"]
    saved = run(env, "setup", json.dumps({"name": "api", "base_url": fake.url, "read_timeout": 7}))
    [seen] = gather([watcher])
    assert seen["changed"] == 7
    assert seen["at"] - saved["at"] < 1.0 + 0.3  # the check interval plus a rebuild


def _breaker_events(env: dict[str, str]) -> list[dict]:
    import sqlite3

    path = env["DATABASE_URL"].removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT from_state, to_state FROM resilience_breakerevent").fetchall()
    return [{"from_state": a, "to_state": b} for a, b in rows]
