"""Four OS processes sharing one endpoint pool's cooldowns and breakers
through a real Redis (and one SQLite file for the policy rows)."""
from __future__ import annotations

import json
import pickle

import pytest
import redis

from tests.support.fake_upstream import FakeUpstream, Reply
from tests.support.worker import gather, run_worker, spawn, start_together, worker_env

POOL_WORKER = "tests.support.pool_worker"

PROCESSES = 4
FAIL_MAX = 3


@pytest.fixture
def shared(tmp_path, redis_url):
    redis.Redis.from_url(redis_url).flushdb()
    servers = [FakeUpstream().start() for _ in range(3)]
    # Slowness is not an outage here: on a loaded CI box a Redis read can take longer than the
    # 0.25 s default socket timeout, and a worker that fell back to its local memory for the
    # probe interval rightly no longer sees the others' cooldowns (its report names it).
    env = worker_env(str(tmp_path / "pool.sqlite3"), redis_url,
                     CACHE_SOCKET_TIMEOUT="2", CACHE_CONNECT_TIMEOUT="2")
    yield env, servers
    for server in servers:
        server.stop()
    redis.Redis.from_url(redis_url).flushdb()


def setup_pool(env, servers, **policy) -> None:
    spec = {"name": "pool", "base_url": servers[0].url, "retry_total": 2, "connect_timeout": 0.5,
            "read_timeout": 3, "deadline": 5, "retry_backoff_factor": 0, "retry_jitter": 0,
            "retry_after_max": 30, "breaker_fail_max": FAIL_MAX, "breaker_reset_timeout": 60,
            "endpoints": [{"name": f"e{i}", "base_url": s.url} for i, s in enumerate(servers)], **policy}
    run_worker(env, "setup", json.dumps(spec), module=POOL_WORKER)


def call_together(env, seconds: float, interval: float) -> list[dict[str, int]]:
    """Every process boots and builds its client, then all start at once."""
    procs = [spawn(env, "call", "pool", "/item", str(seconds), str(interval), module=POOL_WORKER)
             for _ in range(PROCESSES)]
    start_together(procs)
    results = gather(procs)
    assert not any(r["cache_fallbacks"] for r in results), results  # the shared state was shared
    return [result["outcomes"] for result in results]


def test_a_retry_after_cools_the_endpoint_in_every_process(shared):
    env, servers = shared
    setup_pool(env, servers)
    servers[0].script("/item", Reply(429, retry_after="2"), Reply(200, body={"back": True}))
    outcomes = call_together(env, seconds=3.5, interval=0.02)
    assert all(set(o) == {"ok"} for o in outcomes), outcomes  # the 429 failed over: no caller saw it
    arrivals = [r.at for r in servers[0].requests if r.path == "/item"]
    first = arrivals[0]
    # Every process learns of the cooldown within its 0.25 s re-read; from
    # then on nothing reaches the endpoint until the 2 s are over...
    during = [round(at - first, 3) for at in arrivals if first + 0.4 < at < first + 1.95]
    assert during == []
    # ...and then it is back in rotation.
    assert [at for at in arrivals if at >= first + 2.0]
    assert sum(o["ok"] for o in outcomes) > 4 * len(arrivals)  # the others carried the traffic


def test_an_endpoint_breaker_opens_once_for_every_process(shared):
    env, servers = shared
    setup_pool(env, servers)
    servers[1].script("/item", Reply(503))
    outcomes = call_together(env, seconds=2.0, interval=0.01)
    assert all(set(o) == {"ok"} for o in outcomes), outcomes
    failing = servers[1].count("/item")
    # A breaker per process would let FAIL_MAX failures through in each one.
    assert FAIL_MAX <= failing <= FAIL_MAX + PROCESSES < FAIL_MAX * PROCESSES
    client = redis.Redis.from_url(env["REDIS_URL"])
    states = {key.decode(): pickle.loads(client.get(key)) for key in client.keys("*breaker:pool/*:state")}
    assert list(states.values()) == ["open"] and "pool/e1" in next(iter(states))
