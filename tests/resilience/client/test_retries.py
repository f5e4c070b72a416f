"""The retry discipline of an endpoint pool (a primary and fallbacks), the
silent provider, the errors no retry fixes, and an open breaker's recovery.
Real loopback servers that fail on purpose; waits are recorded through the
retry's sleep seams and clocks are moved, never waited for."""
from __future__ import annotations

import asyncio
import itertools
import json
import random
import time

import pytest

from resilience import exceptions, upstream
from resilience.cache import default_cache
from resilience.client import reset_clients
from resilience.client.endpoints import Pool, cooldown_key
from resilience.client.policy import PolicyRetry
from resilience.models import CallLog, Endpoint, Upstream
from resilience.telemetry.calllog import call_log_flush
from tests.support.fake_upstream import Reply

LLM_STATUSES = [429, 500, 502, 503, 504]
CONTEXT_ERROR = {"error": {"message": "This model's maximum context length is 8192 tokens.",
                           "type": "invalid_request_error", "param": "messages",
                           "code": "context_length_exceeded"}}
CONTENT_ERROR = {"error": {"message": "Your request was rejected by the safety system.",
                           "type": "invalid_request_error", "param": None,
                           "code": "content_policy_violation"}}


@pytest.fixture(autouse=True)
def _seeded(monkeypatch):
    monkeypatch.setattr(Pool, "random", random.Random(7))


@pytest.fixture
def waits(monkeypatch):
    """The retry waits asked for, in order (sync and async faces), none slept."""
    asked: list[float] = []

    async def asleep(seconds: float) -> None:
        asked.append(seconds)

    monkeypatch.setattr(PolicyRetry, "sleeper", staticmethod(asked.append))
    monkeypatch.setattr(PolicyRetry, "asleeper", staticmethod(asleep))
    return asked


@pytest.fixture
def make_pool(make_upstream):
    """An upstream whose endpoints e0, e1, ... are `servers` in priority order."""

    def make(servers, *, weights=None, **fields) -> Upstream:
        values = {"endpoint_strategy": "priority", "retry_statuses": LLM_STATUSES,
                  "retry_methods": ["GET", "POST"], **fields}
        row = make_upstream("pool", **values)
        for i, server in enumerate(servers):
            Endpoint.objects.create(upstream=row, name=f"e{i}", base_url=server.url, priority=i,
                                    weight=(weights or [1] * len(servers))[i])
        reset_clients()
        return row

    return make


def served(servers, path="/item"):
    return [server.count(path) for server in servers]


def last_log() -> CallLog:
    call_log_flush()
    return CallLog.objects.order_by("-created_at", "-id").first()


# -- a 5xx once ------------------------------------------------------------------------------
def test_a_500_once_is_retried_on_the_primary_before_any_failover(fakes, make_pool):
    make_pool(fakes[:2])
    fakes[0].script("/item", Reply(500), Reply(200, body={"from": "primary"}))
    response = upstream("pool").get("/item")
    assert response.json() == {"from": "primary"} and response.endpoint == "e0"
    assert served(fakes[:2]) == [2, 0] and response.attempts == 2


def test_a_500_twice_fails_over_after_the_one_retry(fakes, make_pool):
    make_pool(fakes[:2])
    fakes[0].script("/item", Reply(500))
    response = upstream("pool").get("/item")
    assert response.endpoint == "e1" and served(fakes[:2]) == [2, 1]
    assert [(r["endpoint"], r["status"]) for r in last_log().retries] == [("e0", 500), ("e0", 500)]


def test_the_async_face_retries_the_primary_the_same_way(fakes, make_pool):
    make_pool(fakes[:2])
    fakes[0].script("/item", Reply(500), Reply(200, body={"from": "primary"}))
    client = upstream("pool")
    response = asyncio.run(client.aget("/item"))
    assert response.json() == {"from": "primary"} and served(fakes[:2]) == [2, 0]


def test_without_priority_a_500_moves_to_the_next_endpoint_at_once(fakes, make_pool):
    make_pool(fakes[:2], endpoint_strategy="weighted", weights=[1, 0])  # e0 first, e1 only as a fallback
    fakes[0].script("/item", Reply(500), Reply(200))
    response = upstream("pool").get("/item")
    assert response.endpoint == "e1" and served(fakes[:2]) == [1, 1]


# -- 429 ------------------------------------------------------------------------------------------
def test_a_429_with_a_short_retry_after_is_waited_out_on_the_primary(fakes, make_pool, waits):
    make_pool(fakes[:2], retry_after_max=30)
    fakes[0].script("/item", Reply(429, retry_after="1"), Reply(200, body={"from": "primary"}))
    response = upstream("pool").get("/item")
    assert response.json() == {"from": "primary"}
    assert waits == [1.0] and served(fakes[:2]) == [2, 0]


def test_a_retry_after_given_as_a_date_is_read_as_its_seconds(fakes, make_pool, waits):
    from email.utils import formatdate

    make_pool(fakes[:2], retry_after_max=30, deadline=5)
    far = formatdate(timeval=time.time() + 3600, usegmt=True)
    fakes[0].script("/item", Reply(429, retry_after=far), Reply(200))
    assert upstream("pool").get("/item").endpoint == "e1"  # an hour away: not waited for, no backoff retries
    assert waits == [] and served(fakes[:2]) == [1, 1]


def test_the_async_face_waits_out_a_short_retry_after_too(fakes, make_pool, waits):
    make_pool(fakes[:2], retry_after_max=30)
    fakes[0].script("/item", Reply(429, retry_after="1"), Reply(200, body={"from": "primary"}))
    client = upstream("pool")
    response = asyncio.run(client.aget("/item"))
    assert response.json() == {"from": "primary"} and waits == [1.0] and served(fakes[:2]) == [2, 0]


def test_a_retry_after_that_does_not_fit_the_deadline_fails_over_at_once(fakes, make_pool, waits):
    make_pool(fakes[:2], retry_after_max=30, deadline=5)
    fakes[0].script("/item", Reply(429, retry_after="4"), Reply(200))  # more than half the time left
    response = upstream("pool").get("/item")
    assert response.endpoint == "e1" and waits == [] and served(fakes[:2]) == [1, 1]
    upstream("pool").get("/item")
    assert served(fakes[:2]) == [1, 2]  # the primary cools down for the 4 s it asked


# -- 503 / 529 with a Retry-After longer than the call can wait ----------------------------------
@pytest.mark.parametrize("status", [503, 529])
def test_a_503_or_529_asking_past_the_deadline_fails_over_at_once_and_cools_the_primary(
        fakes, make_pool, waits, status):
    make_pool(fakes[:2], retry_after_max=30, deadline=5, retry_statuses=[*LLM_STATUSES, 529])
    fakes[0].script("/item", Reply(status, retry_after="60"), Reply(200))
    response = upstream("pool").get("/item")
    assert response.endpoint == "e1" and waits == [] and served(fakes[:2]) == [1, 1]
    asyncio.run(upstream("pool").aget("/item"))
    assert served(fakes[:2]) == [1, 2]  # the primary cools down for what it asked (up to retry_after_max)


def test_the_async_face_fails_over_from_a_long_529_at_once_too(fakes, make_pool, waits):
    make_pool(fakes[:2], retry_after_max=30, deadline=5, retry_statuses=[*LLM_STATUSES, 529])
    fakes[0].script("/item", Reply(529, retry_after="60"), Reply(200))
    response = asyncio.run(upstream("pool").aget("/item"))
    assert response.endpoint == "e1" and waits == [] and served(fakes[:2]) == [1, 1]


@pytest.mark.parametrize("face", ["sync", "async"])
def test_a_503_asking_past_the_deadline_with_no_other_endpoint_ends_the_call_at_once(
        fakes, make_pool, waits, face):
    make_pool(fakes[:2], retry_after_max=30, deadline=5)
    default_cache().set(cooldown_key("pool", "e1"), time.time() + 600, timeout=600)  # cooled elsewhere
    fakes[0].script("/item", Reply(503, retry_after="20"), Reply(200))
    client = upstream("pool")
    with pytest.raises(exceptions.RetriesExhausted) as caught:
        client.get("/item") if face == "sync" else asyncio.run(client.aget("/item"))
    assert caught.value.last_status == 503 and caught.value.retry_after == 20  # the upstream's own answer
    assert waits == [] and served(fakes[:2]) == [1, 0]  # never slept, never retried
    assert last_log().retries[0]["error"] == "retry_after_past_deadline"


def test_a_single_url_answering_529_past_the_deadline_ends_the_call_at_once(fakes, make_upstream, waits):
    make_upstream("one", base_url=fakes[0].url, retry_after_max=30, deadline=5,
                  retry_statuses=[*LLM_STATUSES, 529], retry_methods=["GET"])
    fakes[0].script("/item", Reply(529, retry_after="600"), Reply(200))
    with pytest.raises(exceptions.RetriesExhausted) as caught:
        upstream("one").get("/item")
    assert caught.value.last_status == 529 and caught.value.retry_after == 600
    assert waits == [] and fakes[0].count("/item") == 1


def test_a_503_asking_less_than_the_deadline_is_still_waited_out_on_a_single_url(fakes, make_upstream, waits):
    make_upstream("one", base_url=fakes[0].url, retry_after_max=30, deadline=5, retry_statuses=LLM_STATUSES,
                  retry_methods=["GET"])
    fakes[0].script("/item", Reply(503, retry_after="2"), Reply(200, body={"ok": True}))
    assert upstream("one").get("/item").json() == {"ok": True}
    assert waits == [2.0] and fakes[0].count("/item") == 2


def test_with_weighted_endpoints_a_429_takes_the_next_endpoint_at_once(fakes, make_pool, waits):
    make_pool(fakes[:2], endpoint_strategy="weighted", weights=[1, 0], retry_after_max=30)
    fakes[0].script("/item", Reply(429, retry_after="1"), Reply(200))
    assert upstream("pool").get("/item").endpoint == "e1"
    assert waits == [] and served(fakes[:2]) == [1, 1]


def test_a_429_without_retry_after_backs_off_with_jitter_then_fails_over(fakes, make_pool, waits):
    make_pool(fakes[:2], retry_total=4, retry_backoff_factor=0.2, retry_jitter=0.1)
    fakes[0].script("/item", Reply(429))
    response = upstream("pool").get("/item")
    assert response.endpoint == "e1" and served(fakes[:2]) == [3, 1]  # two retries on the primary
    assert len(waits) == 2
    assert 0.2 <= waits[0] <= 0.3 and 0.4 <= waits[1] <= 0.5  # factor * 2^(n-1) plus up to the jitter


def test_retries_on_the_primary_always_leave_one_for_the_fallback(fakes, make_pool, waits):
    make_pool(fakes[:2], retry_total=2)  # the seeded openai policy's budget
    fakes[0].script("/item", Reply(429))
    response = upstream("pool").get("/item")
    assert response.endpoint == "e1" and served(fakes[:2]) == [2, 1] and response.attempts == 3


def test_never_more_than_three_attempts_at_one_endpoint_in_its_first_seconds(fakes, make_pool):
    make_pool(fakes[:2], retry_total=10)
    for server in fakes[:2]:
        server.script("/item", Reply(500))
    with pytest.raises(exceptions.RetriesExhausted):
        upstream("pool").get("/item")
    assert served(fakes[:2]) == [3, 3]  # e0 twice, e1 twice, then once more each: no fourth


# -- a silent provider ----------------------------------------------------------------------------
def test_a_primary_that_never_answers_costs_one_timeout_then_the_fallback_answers(fakes, make_pool):
    make_pool(fakes[:2], read_timeout=0.2, retry_total=3)
    fakes[0].script("/item", Reply(200, delay=30))
    response = upstream("pool").get("/item")
    assert response.endpoint == "e1" and served(fakes[:2]) == [1, 1]
    assert [(r["endpoint"], r["error"]) for r in last_log().retries] == [("e0", "ReadTimeoutError")]


def test_the_async_face_leaves_a_silent_primary_after_one_timeout(fakes, make_pool):
    make_pool(fakes[:2], read_timeout=0.2, retry_total=3)
    fakes[0].script("/item", Reply(200, delay=30))
    client = upstream("pool")
    response = asyncio.run(client.aget("/item"))
    assert response.endpoint == "e1" and served(fakes[:2]) == [1, 1]


def test_a_silent_endpoint_is_tried_again_only_when_nothing_else_is_left(fakes, make_pool):
    make_pool(fakes, read_timeout=0.2, retry_total=6)
    fakes[0].script("/item", Reply(200, delay=30))
    fakes[1].script("/item", Reply(500))
    fakes[2].script("/item", Reply(502))
    with pytest.raises(exceptions.UpstreamError):
        upstream("pool").get("/item")
    order = [r["endpoint"] for r in last_log().retries]
    # e1 and e2 get their retry, then their third attempt, before the silent e0 gets a second one.
    assert order == ["e0", "e1", "e1", "e2", "e2", "e1", "e2"], order
    assert served(fakes) == [1, 3, 3]


# -- errors a retry cannot fix --------------------------------------------------------------------
def test_context_length_exceeded_goes_to_the_larger_context_model(fakes, make_pool):
    make_pool(fakes[:2], context_fallback_model="big-context")
    fakes[0].script("/chat", Reply(400, body=CONTEXT_ERROR), Reply(200, body={"ok": True}))
    response = upstream("pool").post("/chat", json={"model": "small", "messages": []})
    assert response.json() == {"ok": True} and response.meta.model == "big-context"
    assert [r.json()["model"] for r in fakes[0].requests] == ["small", "big-context"]
    assert served(fakes[:2], "/chat") == [2, 0]
    log = last_log()
    assert [(r["status"], r["error"], r["fallback_model"]) for r in log.retries] == [
        (400, "context_length_exceeded", "big-context")]


def test_context_length_exceeded_without_a_fallback_fails_at_once_with_the_providers_message(
        fakes, make_pool):
    make_pool(fakes[:2], retry_statuses=[400, *LLM_STATUSES])  # even a policy retrying 400 does not repeat it
    fakes[0].script("/chat", Reply(400, body=CONTEXT_ERROR))
    with pytest.raises(exceptions.UpstreamHTTPError) as caught:
        upstream("pool").post("/chat", json={"model": "small", "messages": []})
    assert "context_length_exceeded" in caught.value.message
    assert caught.value.response.json() == CONTEXT_ERROR
    assert served(fakes[:2], "/chat") == [1, 0]


def test_a_content_policy_refusal_is_returned_at_once(fakes, make_pool):
    make_pool(fakes[:2], context_fallback_model="big-context")
    fakes[0].script("/chat", Reply(400, body=CONTENT_ERROR))
    response = upstream("pool").post("/chat", json={"model": "small"}, raise_for_status=False)
    assert response.status_code == 400 and response.json() == CONTENT_ERROR
    assert served(fakes[:2], "/chat") == [1, 0]


def test_a_content_policy_refusal_goes_to_another_model_when_the_policy_says_so(fakes, make_pool):
    make_pool(fakes[:2], content_policy_fallback_model="lenient")
    fakes[0].script("/chat", Reply(400, body=CONTENT_ERROR), Reply(200, body={"ok": True}))
    response = upstream("pool").post("/chat", data=json.dumps({"model": "strict"}).encode(),
                                     headers={"Content-Type": "application/json"})
    assert response.json() == {"ok": True}
    assert [r.json()["model"] for r in fakes[0].requests] == ["strict", "lenient"]


def test_the_fallback_model_replaces_an_endpoints_own_model_name(fakes, make_pool):
    row = make_pool(fakes[:1], context_fallback_model="big-context")
    Endpoint.objects.filter(upstream=row).update(model="vendor-small")
    reset_clients()
    fakes[0].script("/chat", Reply(400, body=CONTEXT_ERROR), Reply(200, body={"ok": True}))
    upstream("pool").post("/chat", json={"model": "small"})
    assert [r.json()["model"] for r in fakes[0].requests] == ["vendor-small", "big-context"]


def test_a_fallback_model_that_also_overflows_is_the_answer(fakes, make_pool):
    make_pool(fakes[:2], context_fallback_model="big-context")
    fakes[0].script("/chat", Reply(400, body=CONTEXT_ERROR))
    with pytest.raises(exceptions.UpstreamHTTPError):
        upstream("pool").post("/chat", json={"model": "small"})
    assert served(fakes[:2], "/chat") == [2, 0]


# -- recovery of an open breaker ------------------------------------------------------------------
def test_a_primary_back_from_an_outage_is_used_again_within_ten_seconds(fakes, make_pool, breaker_clock):
    make_pool(fakes[:2], breaker_fail_max=2, breaker_probe_interval=1.0, breaker_reset_timeout=8.0,
              retry_total=2)
    fakes[0].script("/item", Reply(500))
    probes = []
    for tick in range(240):  # a call every 0.25 s for 60 s of outage
        seen = fakes[0].count("/item")
        assert upstream("pool").get("/item").status_code == 200  # the fallback carries every call
        if fakes[0].count("/item") > seen:
            probes.append(tick * 0.25)
        breaker_clock.advance(0.25)
    # Two calls trip it (each retried once on the primary), then one probe per wait, never a burst:
    # waits 1, 2, 4, then 8 s at most.
    gaps = [round(b - a, 2) for a, b in itertools.pairwise(probes[1:])]
    assert gaps[:3] == [1.0, 2.0, 4.0] and set(gaps[3:]) == {8.0}
    assert fakes[0].count("/item") == 2 * 2 + len(probes) - 2  # 2 calls x 2 attempts, then one per probe
    fakes[0].script("/item", Reply(200, body={"from": "primary"}))
    recovered_after = None
    for tick in range(41):  # recovered now: back in use within 10 s
        if upstream("pool").get("/item").endpoint == "e0":
            recovered_after = tick * 0.25
            break
        breaker_clock.advance(0.25)
    assert recovered_after is not None and recovered_after <= 8.0
    assert upstream("pool").get("/item").endpoint == "e0"


def test_a_failed_probe_no_longer_reopens_for_the_whole_reset_timeout(fakes, make_pool, breaker_clock):
    make_pool(fakes[:2], breaker_fail_max=1, breaker_probe_interval=1.0, breaker_reset_timeout=30.0)
    fakes[0].script("/item", Reply(500))
    upstream("pool").get("/item")
    breaker_clock.advance(1.0)
    upstream("pool").get("/item")  # the probe, during the outage: fails
    before = fakes[0].count("/item")
    fakes[0].script("/item", Reply(200, body={"from": "primary"}))
    breaker_clock.advance(2.0)  # the next wait is 2 s, not 30
    assert upstream("pool").get("/item").endpoint == "e0" and fakes[0].count("/item") == before + 1


def test_the_api_shows_the_growing_wait(fakes, make_pool, breaker_clock):
    row = make_pool(fakes[:2], breaker_fail_max=1, breaker_probe_interval=1.0, breaker_reset_timeout=8.0)
    fakes[0].script("/item", Reply(500))
    upstream("pool").get("/item")
    breaker_clock.advance(1.0)
    upstream("pool").get("/item")  # failed probe: the next wait is 2 s
    from resilience.client.endpoints import snapshot

    primary = snapshot(row)["endpoints"][0]
    assert primary["state"] == "open" and primary["retry_after"] == pytest.approx(2.0)


@pytest.fixture
def pool_clock(monkeypatch):
    from tests.resilience.conftest import Clock

    clock = Clock(start=2_000_000_000.0)
    monkeypatch.setattr(Pool, "clock", staticmethod(clock))
    return clock


def test_a_probe_is_never_retried_on_its_endpoint(fakes, make_pool, breaker_clock):
    make_pool(fakes[:2], breaker_fail_max=1, breaker_probe_interval=1.0)
    fakes[0].script("/item", Reply(500))
    upstream("pool").get("/item")
    before = fakes[0].count("/item")
    breaker_clock.advance(1.0)
    assert upstream("pool").get("/item").endpoint == "e1"
    assert fakes[0].count("/item") == before + 1  # the probe's verdict is its first answer


def test_a_probe_slot_taken_from_a_stale_half_open_view_is_given_back(on_redis, breaker_clock):
    from resilience.client.breaker import CircuitOpen, SharedBreaker

    here = SharedBreaker("stale", fail_max=1, reset_timeout=8, probe_interval=1)
    there = SharedBreaker("stale", fail_max=1, reset_timeout=8, probe_interval=1)  # another process
    here.record_failure(here.admit(), RuntimeError("down"))
    breaker_clock.advance(1.0)
    probe = here.admit()
    assert probe.probe
    with pytest.raises(CircuitOpen):
        there.admit()  # the slot is taken; `there` now remembers half-open
    here.record_failure(probe, RuntimeError("still down"))
    with pytest.raises(CircuitOpen) as caught:
        there.admit()  # open again for 2 s: no second probe from an old view
    assert caught.value.retry_after == pytest.approx(2.0)


def test_failed_probes_are_one_trip_in_the_statistics(fakes, make_pool, breaker_clock):
    from datetime import timedelta

    from resilience.models import BreakerEvent
    from resilience.telemetry.selectors import upstream_stats

    make_pool(fakes[:2], breaker_fail_max=1, breaker_probe_interval=1.0, breaker_reset_timeout=8.0)
    fakes[0].script("/item", Reply(500))
    upstream("pool").get("/item")
    for wait in (1.0, 2.0, 4.0):  # three probes during the outage, each failing
        breaker_clock.advance(wait)
        upstream("pool").get("/item")
    call_log_flush()
    assert BreakerEvent.objects.filter(to_state="open").count() == 4
    assert upstream_stats(name="pool", window=timedelta(minutes=5))["breaker_trips"] == 1
