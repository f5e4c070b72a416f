"""Limits a provider announces in its headers are shared by every worker (issue 29, the learned-limits
gap): once one worker process learned from an answer's `x-ratelimit-*` headers that nothing is left
until the reset, another worker's very first call to that endpoint is admitted against it (it waits,
and fails at its deadline with `endpoint_limits_reached`) instead of being sent unchecked and meeting
the provider's 429.

Real worker processes (tests.support.quota_worker) sharing a SQLite file and the real Redis, against
a loopback provider that enforces one request a minute and announces it (tests.support.fake_limited).
"""
from __future__ import annotations

import json
import secrets
import time

import pytest
import redis

from tests.support.fake_limited import LimitedOpenAI
from tests.support.worker import gather, run_worker, spawn, start_together, worker_env


def calls(env: dict[str, str], *, processes: int, before=None) -> list[dict[str, int]]:
    """One call from each of `processes` fresh worker processes, started together; `before` runs once
    they are ready (their clients built) and before they call."""
    procs = [spawn(env, "call", "llm", "normal", "1", "1", "0", module="tests.support.quota_worker")
             for _ in range(processes)]
    if before is not None:
        for proc in procs:  # each says it is ready; start_together then waits for nothing more
            line = proc.stdout.readline()
            assert json.loads(line)["ready"], proc.stderr.read()[-3000:]
        before()
        go = f"go {time.time()}\n"
        for proc in procs:
            proc.stdin.write(go)
            proc.stdin.flush()
    else:
        start_together(procs)
    return [result["outcomes"] for result in gather(procs)]


@pytest.fixture
def shared(tmp_path, redis_url):
    """`setup(endpoints)`: the `llm` upstream (no configured limits, a 1 s deadline) on its providers;
    returns the workers' environment."""
    redis.Redis.from_url(redis_url).flushdb()

    def setup(spec_endpoints: list[dict], base_url: str) -> dict[str, str]:
        env = worker_env(str(tmp_path / "learned.sqlite3"), redis_url,
                         CACHE_KEY_PREFIX=f"learned{secrets.token_hex(4)}")
        spec = {"name": "llm", "base_url": base_url, "retry_total": 0, "deadline": 1, "connect_timeout": 0.5,
                "read_timeout": 1, "breaker_enabled": False, "log_sample_rate": 0.01,
                "endpoint_strategy": "priority", "endpoints": spec_endpoints}
        run_worker(env, "setup", json.dumps(spec), module="tests.support.pool_worker")
        return env

    yield setup
    redis.Redis.from_url(redis_url).flushdb()


def test_a_new_workers_first_call_is_admitted_against_a_limit_another_worker_learned(shared):
    with LimitedOpenAI(rpm=1, window=60, announce=True) as provider:
        env = shared([], provider.root_url)
        assert calls(env, processes=1) == [{"200": 1}]  # unchecked: nothing was known; it learns
        later = calls(env, processes=3)
    print(f"\nafter one worker learned '0 left for a minute': three new workers' first calls {later}; "
          f"the provider answered {len(provider.accepted)} and refused {provider.refused}")
    assert later == [{"endpoint_limits_reached": 1}] * 3
    assert (len(provider.accepted), provider.refused) == (1, 0)


def test_a_running_worker_picks_up_what_another_learned_with_its_shared_cooldowns(shared):
    with LimitedOpenAI(rpm=1, window=60, announce=True) as first, \
            LimitedOpenAI(rpm=1, window=60, announce=True) as second:
        env = shared([{"name": "a", "base_url": first.root_url, "priority": 0},
                      {"name": "b", "base_url": second.root_url, "priority": 1}], first.root_url)
        outcomes: list[list[dict[str, int]]] = []
        # Two workers built before anything was learned; while they wait, another learns both
        # endpoints (its second call finds `a` full and goes to `b`).
        late = calls(env, processes=2,
                     before=lambda: outcomes.append(calls(env, processes=1) + calls(env, processes=1)))
    print(f"\nlearning worker {outcomes}, then two workers built before it learned: {late}; providers "
          f"answered {len(first.accepted)} + {len(second.accepted)}, "
          f"refused {first.refused + second.refused}")
    assert outcomes == [[{"200": 1}, {"200": 1}]]
    assert late == [{"endpoint_limits_reached": 1}] * 2
    assert (len(first.accepted), len(second.accepted), first.refused, second.refused) == (1, 1, 0, 0)
