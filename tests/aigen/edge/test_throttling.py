"""The doors' per-user throttle (aigen.edge.throttling) on a real Redis: far
from the limit a worker counts its caller's requests in blocks (one round
trip for up to 16), near it one at a time, and workers sharing a window
allow exactly the limit between them."""
from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest
from django.core.cache import cache

from aigen.edge import throttling
from aigen.edge.throttling import GenerateThrottle, WindowLeases

NOW = 1_000_020.0  # a fixed clock: every call in one window, whatever the test takes


def _request(pk: int = 7) -> SimpleNamespace:
    return SimpleNamespace(user=SimpleNamespace(pk=pk, is_authenticated=True))


@pytest.fixture
def rate(settings, monkeypatch):
    """`set(rate)`: the generate throttle's rate; the throttle's clock fixed, its round trips counted."""
    trips: list[int] = []
    count = GenerateThrottle._count

    def counted(self, key, delta):
        trips.append(delta)
        return count(self, key, delta)

    monkeypatch.setattr(GenerateThrottle, "timer", staticmethod(lambda: NOW))
    monkeypatch.setattr(GenerateThrottle, "_count", counted)

    def set_rate(value: str) -> list[int]:
        settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"generate": value}}
        return trips
    return set_rate


def _window_count(request) -> int:
    return int(cache.get(GenerateThrottle().window(request).key) or 0)


def test_far_from_the_limit_one_round_trip_counts_sixteen_requests(on_redis, rate):
    trips = rate("100000/min")
    request = _request()
    assert all(GenerateThrottle().allow_request(request, None) for _ in range(50))
    # The window's first count here is one (the worker learns the count), then blocks of 16:
    # requests 2-17, 18-33, 34-49, and 50 starts a fifth.
    assert trips == [1, 16, 16, 16, 16]
    assert _window_count(request) == 65  # every request allowed was counted first; 15 held for the next


def test_near_the_limit_every_request_is_counted_alone(on_redis, rate):
    trips = rate("10/min")
    request = _request()
    allowed = [GenerateThrottle().allow_request(request, None) for _ in range(12)]
    assert allowed == [True] * 10 + [False] * 2
    assert trips == [1] * 12  # an eighth of what is left is under 2 from the start
    assert _window_count(request) == 12


def test_a_blocks_unused_counts_go_back_with_the_next_count(on_redis, rate, monkeypatch):
    trips = rate("100000/min")
    monkeypatch.setattr(throttling, "LEASE_SECONDS", 0.2)
    request = _request()
    for _ in range(3):  # 1, then a block of 16 of which 2 are used
        assert GenerateThrottle().allow_request(request, None)
    assert _window_count(request) == 17
    time.sleep(0.3)  # the block's time is up: its 14 unused go back with the next count
    assert GenerateThrottle().allow_request(request, None)
    assert trips == [1, 16, 16 - 14]
    assert _window_count(request) == 4 + 15  # four allowed, fifteen held by the new block


def test_with_leases_off_every_request_is_one_round_trip(on_redis, rate, settings):
    settings.AIGEN = {**settings.AIGEN, "THROTTLE_LEASE": 0}
    trips = rate("100000/min")
    request = _request()
    assert all(GenerateThrottle().allow_request(request, None) for _ in range(20))
    assert trips == [1] * 20 and _window_count(request) == 20


@pytest.mark.parametrize("limit", [100, 1000])
def test_workers_sharing_a_window_allow_exactly_its_limit(on_redis, rate, limit):
    """Four workers (each its own blocks) call for one caller until each has been refused
    three times: between them they allow the limit, never more and none lost to a block."""
    rate(f"{limit}/min")
    request = _request()
    allowed = [0] * 4
    start = threading.Barrier(4)

    def worker(index: int) -> None:
        throttle_class = type("WorkerThrottle", (GenerateThrottle,), {"leases": WindowLeases()})
        start.wait()
        refused = 0
        while refused < 3:
            if throttle_class().allow_request(request, None):
                allowed[index] += 1
            else:
                refused += 1

    threads = [threading.Thread(target=worker, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sum(allowed) == limit, allowed  # how they share it is the threads' scheduling


def test_the_async_face_takes_from_the_block_on_the_loop(on_redis, rate, monkeypatch):
    """`aallow` leaves the loop only to count, and once a block is held its calls never wait for
    one: the call that takes it down to a quarter starts the next count in a thread (topped up
    ahead). 50 requests 5 ms apart: two counts waited for (the window's first, a single one, then
    the first block), the rest counted ahead; every request allowed was counted first."""
    import asyncio

    trips = rate("100000/min")
    request = _request()
    waited: list[int] = []
    counted = GenerateThrottle._counted
    monkeypatch.setattr(GenerateThrottle, "_counted",
                        lambda self, window: waited.append(1) or counted(self, window))

    async def calls() -> list[bool]:
        allowed = []
        for _ in range(50):
            allowed.append(await GenerateThrottle().aallow(request))
            await asyncio.sleep(0.005)
        return allowed

    assert all(asyncio.run(calls()))
    # 2 when every top-up came before its block ran out (at most 3 on a box that stalled a thread
    # for the 20 ms a quarter-block lasts here); counted on the loop's own, 50 calls take 5.
    assert len(waited) <= 3
    assert trips[:2] == [1, 16] and set(trips[2:]) == {16} and len(trips) >= 4
    assert _window_count(request) == sum(trips) >= 50


def test_a_top_up_near_the_limit_adds_nothing_and_the_next_call_counts_alone(on_redis, rate):
    """Topped up ahead only far from the limit: a block whose window has less than two blocks of
    room left gets no top-up (near the limit every request is counted alone)."""
    leases = WindowLeases()
    far, near = "throttle:generate:9:1", "throttle:generate:10:1"
    assert leases.granted(far, total=16, took=16, limit=1000)
    assert leases.granted(near, total=90, took=16, limit=100)  # 10 of room left after this block
    for key in (far, near):
        while leases._held[key].left > 4:
            assert leases.take(key)
        assert leases.running_low(key) is True and leases.running_low(key) is False  # once
    assert leases.top_up_size(far, limit=1000) == 16
    assert leases.top_up_size(near, limit=100) == 0 and leases._held[near].topping is False
    leases.topped_up(far, total=32, took=16, limit=1000)
    assert leases._held[far].left == 4 + 16 and leases._held[far].topping is False


def test_on_local_memory_blocks_count_the_same(db, rate):
    trips = rate("100000/min")
    request = _request(pk=8)
    assert all(GenerateThrottle().allow_request(request, None) for _ in range(20))
    assert trips == [1, 16, 16]
    assert _window_count(request) == 33


def test_a_worker_keeps_a_bounded_number_of_blocks(monkeypatch):
    monkeypatch.setattr(throttling, "LEASES_MAX", 8)
    leases = WindowLeases()
    for user in range(20):  # live blocks for twenty callers at once
        assert leases.granted(f"throttle:generate:{user}:1", total=16, took=16, limit=1000)
    assert len(leases._held) <= 8
    spent = WindowLeases()
    for user in range(20):  # spent blocks (one count each) go first
        assert spent.granted(f"throttle:generate:{user}:1", total=1, took=1, limit=1000)
    assert len(spent._held) <= 8


@pytest.mark.parametrize("callers", [60, 200])
def test_concurrent_calls_of_one_worker_are_all_allowed_up_to_the_limit(on_redis, rate, callers):
    """A worker's calls arriving at once for the last of a window: none is refused while the
    worker holds counts of its own (a block granted to one call is used by the others)."""
    rate("60/min")
    request = _request()
    start = threading.Barrier(callers)
    allowed: list[bool] = []

    def call() -> None:
        start.wait()
        allowed.append(GenerateThrottle().allow_request(request, None))

    threads = [threading.Thread(target=call) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert allowed.count(True) == 60 and len(allowed) == callers
