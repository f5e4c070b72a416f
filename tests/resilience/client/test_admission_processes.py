"""Endpoint limits exact across workers (issue 29, item 5: the endpoint parts), with real Redis and a
loopback provider that enforces its own limit and answers 429 past it (tests.support.fake_limited):

- the production server (`make serve`: gunicorn, four uvicorn workers) in front of an endpoint with
  an `rpm_limit`: the provider never receives more than the limit in any window and answers no 429;
  callers beyond it wait, or get 503 with Retry-After at their deadline;
- the same server in front of a provider that announces its limit only in its headers: after the
  first answers, the gateway keeps under it;
- four worker processes calling one limited endpoint at three priorities under saturation: `high`
  calls wait a small fraction of what `low` calls wait, a batch of `low` calls (a warmup's) finishes,
  interactive (`normal`) calls see no 429.

The limits' window is shortened (`QUOTA_WINDOW_SECONDS`) so a run takes seconds, not minutes; the
figures are printed (run with -s to read them).
"""
from __future__ import annotations

import json
import secrets
import statistics
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import redis

from tests.support.fake_limited import LimitedOpenAI
from tests.support.live_server import LiveServer
from tests.support.worker import gather, run_worker, spawn, start_together, worker_env

WINDOW = 3.0
LIMIT = 40
ANNOUNCED = 20


@pytest.fixture(scope="module")
def served(tmp_path_factory, redis_url):
    """One four-worker server for the module, with a limited endpoint, an announcing provider
    and a limited endpoint with a short deadline."""
    with LimitedOpenAI(rpm=LIMIT, window=WINDOW) as limited, \
            LimitedOpenAI(rpm=ANNOUNCED, window=WINDOW, announce=True) as announcing, \
            LimitedOpenAI(rpm=1000, window=WINDOW) as tight:
        common = "retry_total=0, breaker_enabled=False, read_timeout=5, log_sample_rate=0.01"
        setup = (
            "from resilience.models import Endpoint, Upstream\n"
            f"u = Upstream.objects.create(name='limited', base_url={limited.url!r},"
            f" served_models=['m-limited'], deadline=15, {common})\n"
            f"Endpoint.objects.create(upstream=u, name='account', base_url={limited.url!r},"
            f" rpm_limit={LIMIT})\n"
            f"Upstream.objects.create(name='announced', base_url={announcing.url!r},"
            f" served_models=['m-announced'], deadline=15, {common})\n"
            f"t = Upstream.objects.create(name='tight', base_url={tight.url!r}, served_models=['m-tight'],"
            f" deadline=0.5, connect_timeout=0.2, {common.replace('read_timeout=5', 'read_timeout=0.5')})\n"
            f"Endpoint.objects.create(upstream=t, name='account', base_url={tight.url!r}, rpm_limit=1)\n")
        env = {"REDIS_URL": redis_url, "CACHE_KEY_PREFIX": f"quota{secrets.token_hex(4)}",
               "AI_GENERATE_THROTTLE": "1000000/min", "QUOTA_WINDOW_SECONDS": str(WINDOW)}
        with LiveServer(tmp_path_factory.mktemp("quota"), env=env, workers=4, setup=setup) as live:
            client = openai.OpenAI(api_key=live.token("caller"), base_url=live.url + "/v1", max_retries=0)
            yield client, limited, announcing


def ask(client: openai.OpenAI, model: str) -> str:
    try:
        client.chat.completions.create(model=model, max_tokens=5,
                                       messages=[{"role": "user", "content": "hi"}])
    except openai.APIStatusError as err:
        retry_after = err.response.headers.get("Retry-After", "")
        return f"{err.status_code} {err.body.get('code') if isinstance(err.body, dict) else ''} {retry_after}"
    return "200"


def run_callers(client: openai.OpenAI, model: str, calls: int, callers: int) -> list[str]:
    with ThreadPoolExecutor(callers) as pool:
        return list(pool.map(lambda _: ask(client, model), range(calls)))


def test_the_provider_never_receives_more_than_the_limit_in_any_window(served):
    client, limited, _ = served
    outcomes = run_callers(client, "m-limited", calls=4 * LIMIT, callers=16)
    ok = outcomes.count("200")
    print(f"\nrpm_limit {LIMIT} per {WINDOW:.0f} s, {len(outcomes)} calls from 16 callers over 4 workers: "
          f"{ok} answered, {len(outcomes) - ok} refused at their deadline; the provider received "
          f"{len(limited.accepted)}, at most {limited.max_in_window()} in any window, and answered "
          f"{limited.refused} 429s")
    assert limited.refused == 0
    assert limited.max_in_window() <= LIMIT
    assert ok == len(limited.accepted)
    assert all(o == "200" or o.startswith("503 endpoint_limits_reached") for o in outcomes), outcomes


def test_past_its_deadline_a_waiting_caller_gets_503_with_retry_after_in_openais_shape(served):
    client, _, _ = served
    first, second = ask(client, "m-tight"), ask(client, "m-tight")
    assert first == "200"
    status, code, retry_after = second.split()
    assert (status, code) == ("503", "endpoint_limits_reached") and int(retry_after) >= 1


def test_a_limit_announced_only_in_headers_is_kept_after_the_first_answers(served):
    client, _, announcing = served
    outcomes = run_callers(client, "m-announced", calls=4 * ANNOUNCED, callers=8)
    first = announcing.accepted[0]
    late = [at for at in announcing.refused_at if at > first + WINDOW]
    print(f"\nprovider announcing {ANNOUNCED} per {WINDOW:.0f} s in headers only, {len(outcomes)} calls from "
          f"8 callers over 4 workers: {outcomes.count('200')} answered; the provider received "
          f"{len(announcing.accepted)}, at most {announcing.max_in_window()} in any window, and answered "
          f"{announcing.refused} 429s ({len(late)} after the first window)")
    assert late == []
    assert announcing.max_in_window() <= ANNOUNCED


# -- priorities across worker processes ------------------------------------------------------------
SATURATED = 30
SATURATED_WINDOW = 2.0


@pytest.fixture
def shared(tmp_path, redis_url):
    redis.Redis.from_url(redis_url).flushdb()
    with LimitedOpenAI(rpm=SATURATED, window=SATURATED_WINDOW) as provider:
        env = worker_env(str(tmp_path / "quota.sqlite3"), redis_url,
                         QUOTA_WINDOW_SECONDS=str(SATURATED_WINDOW))
        spec = {"name": "llm", "base_url": provider.root_url, "retry_total": 0, "deadline": 30,
                "read_timeout": 5, "breaker_enabled": False, "log_sample_rate": 0.01,
                "endpoints": [{"name": "account", "base_url": provider.root_url, "rpm_limit": SATURATED}]}
        run_worker(env, "setup", json.dumps(spec), module="tests.support.pool_worker")
        yield env, provider
    redis.Redis.from_url(redis_url).flushdb()


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1]


def test_under_saturation_high_waits_a_tenth_of_low_and_a_low_batch_finishes(shared):
    env, provider = shared
    # (priority, threads, calls per thread, pause): a warmup's batch of 128 low calls from two
    # processes, interactive callers at normal, staff at high.
    plan = [("low", 16, 4, 0.0), ("low", 16, 4, 0.0), ("normal", 2, 8, 0.8), ("high", 2, 8, 0.8)]
    procs = [spawn(env, "call", "llm", priority, str(threads), str(calls), str(pause),
                   module="tests.support.quota_worker") for priority, threads, calls, pause in plan]
    start_together(procs)
    results = gather(procs)
    waits = {"low": results[0]["waits"] + results[1]["waits"], "normal": results[2]["waits"],
             "high": results[3]["waits"]}
    outcomes = {priority: {} for priority in waits}
    for (priority, *_), result in zip(plan, results, strict=True):
        for code, count in result["outcomes"].items():
            outcomes[priority][code] = outcomes[priority].get(code, 0) + count
    figures = {p: f"p50 {statistics.median(w):.3f} s, p95 {p95(w):.3f} s" for p, w in waits.items()}
    print(f"\n{SATURATED} per {SATURATED_WINDOW:.0f} s, 160 calls from 4 processes: wait {figures}; "
          f"outcomes {outcomes}; the low batch took {max(r['took'] for r in results[:2]):.1f} s; "
          f"provider: at most {provider.max_in_window()} in any window, {provider.refused} 429s")
    assert outcomes == {"low": {"200": 128}, "normal": {"200": 16}, "high": {"200": 16}}
    assert provider.refused == 0 and provider.max_in_window() <= SATURATED
    assert p95(waits["high"]) < p95(waits["low"]) / 10
