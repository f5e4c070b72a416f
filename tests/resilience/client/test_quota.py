"""Endpoint quotas on a real Redis (one Lua script per admission) and in process memory: the
sliding window, tokens reserved and corrected, the provider's headers, the priority queue."""
from __future__ import annotations

import time

import pytest

from resilience.cache import reset_engines
from resilience.client.quota import (
    Quota,
    Reservation,
    duration_seconds,
    local_reset,
    tokens_needed,
    usage_tokens,
)

WINDOW = 0.3


@pytest.fixture(params=["redis", "memory"])
def store(request, settings, redis_url):
    """The default cache on the shared test Redis, or on local memory only."""
    location = redis_url if request.param == "redis" else ""
    settings.CACHES = {"default": {"BACKEND": "resilience.cache.FallbackCache", "LOCATION": location,
                                   "KEY_PREFIX": f"quota-{time.monotonic_ns()}"}}
    reset_engines()
    local_reset()
    yield request.param
    reset_engines()
    local_reset()


def admit(quota: Quota, name: str, *, tokens: int = 0, rank: int = 1):
    return quota.admit(tokens=tokens, waiter=name, reservation=f"{name}.{time.monotonic_ns()}", rank=rank,
                       window=WINDOW)


def test_durations_in_openais_format():
    assert duration_seconds("6m0s") == 360
    assert duration_seconds("1s") == 1
    assert duration_seconds("20ms") == pytest.approx(0.02)
    assert duration_seconds("1h2m3.5s") == pytest.approx(3723.5)
    assert duration_seconds("2.5") == 2.5
    assert duration_seconds("soon") is None and duration_seconds("") is None


def test_the_reservation_is_the_prompt_estimate_plus_the_answers_most():
    body = {"model": "m", "messages": [{"role": "user", "content": "x" * 400}], "max_tokens": 50}
    assert 150 < tokens_needed(body, None, 1024) < 180  # ~470 bytes / 4 + max_tokens
    assert tokens_needed({"model": "m"}, b'{"model":"m"}', 1024) == 3 + 1024
    assert tokens_needed(None, b"plain", 1024) == 0
    assert usage_tokens(b'{"usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}') == 7
    assert usage_tokens(b'{"usage": {"input_tokens": 3, "output_tokens": 5}}') == 8
    assert usage_tokens(b'{"id": 1}') is None


def test_no_more_requests_than_the_limit_in_any_window(store):
    quota = Quota("up", "e0", rpm=3, tpm=None)
    assert [admit(quota, f"c{i}").admitted for i in range(3)] == [True, True, True]
    refused = admit(quota, "c3")
    assert not refused.admitted and 0 < refused.wait <= WINDOW + 0.01
    time.sleep(refused.wait + 0.01)
    assert admit(quota, "c3").admitted


def test_slices_spread_the_requests_over_the_window(store):
    quota = Quota("up", "e0", rpm=10, tpm=None)

    def sliced(name):
        return quota.admit(tokens=0, waiter=name, reservation=name, rank=1, window=WINDOW, slices=5)

    assert [sliced(f"c{i}").admitted for i in range(3)] == [True, True, False]
    refused = sliced("c2")
    assert 0 < refused.wait <= WINDOW / 5 + 0.01  # a slice, not the window
    time.sleep(refused.wait + 0.01)
    assert sliced("c2").admitted


def test_tokens_are_reserved_then_corrected_from_the_answers_usage(store):
    quota = Quota("up", "e0", rpm=None, tpm=100)
    grant = quota.admit(tokens=80, waiter="a", reservation="r1", rank=1, window=WINDOW)
    assert grant.admitted and not admit(quota, "b", tokens=80).admitted
    quota.leave("b")
    quota.settle(Reservation(quota, "r1", 80, grant), headers={}, content=b'{"usage": {"total_tokens": 10}}')
    assert admit(quota, "c", tokens=80).admitted  # corrected at this admission: 10 + 80 fit in 100


def test_the_providers_headers_are_never_planned_past(store):
    quota = Quota("up", "e0", rpm=None, tpm=None)
    assert not quota.active
    quota.settle(None, headers={"x-ratelimit-limit-requests": "100", "x-ratelimit-remaining-requests": "2",
                                "x-ratelimit-reset-requests": "250ms"}, content=None)
    assert quota.active
    assert [admit(quota, f"c{i}").admitted for i in range(3)] == [True, True, False]
    time.sleep(0.26)
    assert admit(quota, "c2").admitted  # the reset passed: the announced limit of 100 counts


def test_a_429_leaves_nothing_until_its_retry_after(store):
    quota = Quota("up", "e0", rpm=50, tpm=None)
    grant = admit(quota, "a")
    quota.refused(Reservation(quota, "r", 0, grant), 1.0)
    later = admit(quota, "b")
    assert not later.admitted and 0.9 < later.wait <= 1.0


def test_freed_room_goes_to_the_highest_priority_first_fifo_within_one(store):
    quota = Quota("up", "e0", rpm=1, tpm=None)
    assert admit(quota, "first").admitted
    waiting = [("low1", 2), ("normal1", 1), ("low2", 2), ("high1", 0), ("normal2", 1)]
    for name, rank in waiting:
        assert not admit(quota, name, rank=rank).admitted
    order = []
    while waiting:
        time.sleep(WINDOW + 0.01)
        for name, rank in list(waiting):
            if admit(quota, name, rank=rank).admitted:
                order.append(name)
                waiting.remove((name, rank))
    assert order == ["high1", "normal1", "normal2", "low1", "low2"]


def test_a_waiter_that_stops_looking_leaves_the_queue(store, monkeypatch):
    from resilience.client import quota as module

    monkeypatch.setattr(module, "STALE_WAITER", 0.05)
    quota = Quota("up", "e0", rpm=1, tpm=None)
    assert admit(quota, "first").admitted
    assert not admit(quota, "dead", rank=0).admitted  # its worker dies: it never looks again
    time.sleep(WINDOW + 0.06)
    assert admit(quota, "alive", rank=2).admitted


def test_every_worker_shares_one_quota_through_redis_and_none_without(store):
    quota = Quota("up", "e0", rpm=2, tpm=None)
    other_worker = Quota("up", "e0", rpm=2, tpm=None)  # another process's view: same keys
    assert admit(quota, "a").admitted and admit(other_worker, "b").admitted
    assert not admit(other_worker, "c").admitted
    if store == "redis":
        local_reset()  # what this process holds in memory plays no part
        assert not admit(quota, "d").admitted
    else:
        local_reset()  # a process of its own: a fresh memory, a whole limit again
        assert admit(quota, "d").admitted


def test_the_admission_state_counts_waiters_and_waits_by_priority(store):
    from resilience.client.quota import admission_state

    quota = Quota("up", "e0", rpm=1, tpm=None)
    assert admit(quota, "first", rank=0).admitted
    assert not admit(quota, "late", rank=2).admitted
    state = admission_state("up")["priorities"]
    assert (state["high"]["admitted"], state["low"]["waiting"]) == (1, 1)
    time.sleep(WINDOW + 0.01)
    assert admit(quota, "late", rank=2).admitted
    low = admission_state("up")["priorities"]["low"]
    assert low["waiting"] == 0 and low["admitted"] == 1 and low["max_wait_s"] >= WINDOW


def test_a_reservation_never_settled_leaves_with_its_window(store):
    # Its worker was killed mid-call: no correction ever comes, the window frees the room anyway.
    quota = Quota("up", "e0", rpm=None, tpm=100)
    assert admit(quota, "killed", tokens=90).admitted
    refused = admit(quota, "next", tokens=90)
    assert not refused.admitted and refused.wait <= WINDOW + 0.01
    time.sleep(refused.wait + 0.01)
    assert admit(quota, "next", tokens=90).admitted


def leasing(quota: Quota, name: str, *, tokens: int = 0, lease: int = 16, seconds: float = 5.0):
    return quota.admit(tokens=tokens, waiter=name, reservation=f"{name}.{time.monotonic_ns()}", rank=1,
                       window=WINDOW, lease=lease, lease_seconds=seconds)


def test_far_from_its_limit_one_admission_leases_requests_to_its_process(store):
    quota = Quota("up", "e0", rpm=128, tpm=None)
    other_worker = Quota("up", "e0", rpm=128, tpm=None)  # same keys, no lease of its own
    first = leasing(quota, "a")
    if store == "memory":  # nothing to save without a round trip: one request per admission
        assert first.admitted and first.lease == 1 and quota.leased(0) is None
        return
    assert first.admitted and first.lease == 16 and first.requests == 1  # 128 / 8 of the room at most
    taken = [quota.leased(0) for _ in range(3)]
    assert [grant.requests for _, grant in taken] == [2, 3, 4]  # the running count, as if admitted one by one
    assert [admit(other_worker, f"b{i}").admitted for i in range(112)] == [True] * 112
    assert not admit(other_worker, "b112").admitted  # the lease's 12 unused requests are held
    other_worker.leave("b112")
    assert leasing(quota, "c", lease=0).admitted  # this admission gives back the 12 first
    assert [admit(other_worker, f"d{i}").admitted for i in range(12)] == [True] * 11 + [False]


def test_a_lease_holds_tokens_and_gives_back_what_its_calls_did_not_use(store):
    if store == "memory":  # no lease in process memory (the test above shows it)
        return
    quota = Quota("up", "e0", rpm=None, tpm=8000)
    other_worker = Quota("up", "e0", rpm=None, tpm=8000)
    first = leasing(quota, "a", tokens=100)
    assert first.admitted and first.lease == 10  # 8000 / (100 * 8)
    lease_id, second = quota.leased(100)
    assert second.tokens == first.tokens + 100
    quota.settle(Reservation(quota, lease_id, 100, second), headers={},
                 content=b'{"usage": {"total_tokens": 40}}')  # it cost 40, not 100
    # The next admission returns 8 requests and 800 tokens and applies the correction: 140 held.
    assert leasing(quota, "c", tokens=1, lease=0).admitted
    assert admit(other_worker, "big", tokens=8000 - 141).admitted
    assert not admit(other_worker, "one-more", tokens=1).admitted


def test_a_lease_ends_with_its_time_a_429_or_a_provider_that_says_little_is_left(store):
    if store == "memory":  # no lease in process memory
        return
    quota = Quota("up", "e0", rpm=1000, tpm=None)
    assert leasing(quota, "a", seconds=0.05).lease == 16
    assert quota.leased(0) is not None
    time.sleep(0.06)
    assert quota.leased(0) is None  # past its time
    assert leasing(quota, "b").lease == 16
    quota.refused(None, 1.0)
    assert quota.leased(0) is None  # the provider said no more
    quota = Quota("up", "e1", rpm=1000, tpm=None)
    assert leasing(quota, "c").lease == 16
    quota.settle(None, headers={"x-ratelimit-remaining-requests": "40", "x-ratelimit-limit-requests": "1000",
                                "x-ratelimit-reset-requests": "10s"}, content=None)
    assert quota.leased(0) is None  # 40 left is under eight times the 15 unused
    assert leasing(quota, "d").lease == 5  # an eighth of what the provider said is left


def test_every_key_an_admission_writes_on_redis_expires_when_idle(store, redis_url):
    """Nothing outlives an idle endpoint: the log and the tokens live two windows past the last
    admission, the totals a day, the minute's admission counts an hour."""
    if store == "memory":  # process memory: nothing to expire
        return
    import redis

    from resilience.cache import default_cache

    quota = Quota("up", "e0", rpm=1000, tpm=10**6)
    made = [str(default_cache().engine.redis.client.make_key(key)) for key in quota.keys[:3]]
    client = redis.Redis.from_url(redis_url)
    for round_ in range(3):  # the first admission of an empty window, then within one, then after it
        assert admit(quota, f"c{round_}", tokens=10).admitted
        lives = [client.pttl(key) for key in made]
        assert 0 < lives[0] <= 2 * WINDOW * 1000 and 0 < lives[1] <= 2 * WINDOW * 1000, lives
        assert 2 * WINDOW * 1000 < lives[2] <= 86_400_000, lives
        time.sleep(WINDOW * 0.7 if round_ == 0 else WINDOW + 0.05)
    waits = [key for key in client.scan_iter(match="*quota:up:waits:*")]
    assert waits and all(0 < client.pttl(key) <= 3_600_000 for key in waits)
