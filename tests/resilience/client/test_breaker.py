"""The shared breaker on its own: pybreaker's state machine over the cache,
transitions as values, no round trip on a healthy admission."""
from __future__ import annotations

import pytest
from django.core.cache import cache

from resilience.client.breaker import CLOSED, HALF_OPEN, OPEN, CircuitOpen, SharedBreaker, Transition


@pytest.fixture
def changes() -> list[Transition]:
    return []


@pytest.fixture
def breaker(changes, breaker_clock) -> SharedBreaker:
    return SharedBreaker("b", fail_max=2, reset_timeout=10, half_open_max=1, listeners=[changes.append])


def test_opens_at_the_threshold_and_tells_listeners_a_value(breaker, changes):
    first = breaker.admit()
    breaker.record_failure(first, RuntimeError("x"))
    assert breaker.status()["state"] == CLOSED and breaker.status()["failures"] == 1
    breaker.record_failure(breaker.admit(), RuntimeError("x"))
    assert changes == [Transition("b", CLOSED, OPEN, "2 consecutive failures")]
    with pytest.raises(CircuitOpen) as refused:
        breaker.admit()
    assert 9.9 < refused.value.retry_after <= 10


def test_a_success_resets_the_count_only_when_there_is_one(breaker):
    breaker.record_failure(breaker.admit(), RuntimeError("x"))
    admission = breaker.admit()
    assert admission.fails_seen == 1
    breaker.record_success(admission)
    assert breaker.status()["failures"] == 0
    assert breaker.admit().fails_seen == 0


def test_half_open_admits_the_configured_probes_then_closes(breaker, breaker_clock, changes):
    for _ in range(2):
        breaker.record_failure(breaker.admit(), RuntimeError("x"))
    breaker_clock.advance(10.5)
    probe = breaker.admit()
    assert probe.probe and probe.state == HALF_OPEN
    with pytest.raises(CircuitOpen):
        breaker.admit()  # the one probe slot is taken
    breaker.record_success(probe)
    assert [c.new for c in changes] == [OPEN, HALF_OPEN, CLOSED]
    assert not breaker.admit().probe


def test_a_healthy_admission_reads_process_memory(breaker, monkeypatch):
    breaker.admit()  # the first read of the shared state
    reads = []
    original = breaker.storage.snapshot
    monkeypatch.setattr(breaker.storage, "snapshot", lambda: reads.append(1) or original())
    for _ in range(100):
        breaker.admit()
    assert reads == []  # within closed_recheck: no cache round trip


def test_another_workers_open_is_seen_within_the_recheck(breaker, monkeypatch):
    import time

    breaker.admit()
    SharedBreaker("b").storage.state = OPEN  # as another worker would leave it
    cache.set(breaker.storage.k_opened, SharedBreaker.clock(), None)
    later = time.monotonic() + breaker.closed_recheck + 0.01
    monkeypatch.setattr("resilience.client.breaker.time.monotonic", lambda: later)
    with pytest.raises(CircuitOpen):
        breaker.admit()


def test_an_operator_reset_closes_and_tells(breaker, changes):
    for _ in range(2):
        breaker.record_failure(breaker.admit(), RuntimeError("x"))
    assert breaker.reset() is True
    assert changes[-1] == Transition("b", OPEN, CLOSED, "reset by operator")
    assert breaker.admit().state == CLOSED
    assert breaker.reset() is False  # already closed: nothing to tell


def test_on_the_loop_a_closed_snapshot_is_reread_ahead_in_a_thread(on_redis):
    """resilience.client.ahead: on the event loop, a call that finds a closed snapshot in the last
    quarter of `closed_recheck` admits from memory and starts its re-read in a thread (here it
    learns that another worker opened the breaker); a due one is read first (StoreNeeded: the
    store step's hop), as before."""
    import asyncio
    import time
    from dataclasses import replace

    from resilience.client.breaker import StoreNeeded

    breaker = SharedBreaker("ahead", fail_max=2, reset_timeout=10)

    def aged(by: float) -> None:
        breaker._snapshot = replace(breaker._snapshot, read_at=time.monotonic() - by * breaker.closed_recheck)

    async def reread() -> None:
        for _ in range(500):
            if breaker._snapshot.state == OPEN:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the re-read ahead did not come")

    async def run() -> None:
        breaker.admit()  # the first read
        SharedBreaker("ahead").storage.state = OPEN  # as another worker would leave it
        cache.set(breaker.storage.k_opened, SharedBreaker.clock(), None)
        aged(0.5)
        assert breaker.admit(in_memory=True).state == CLOSED and not breaker._ahead._running  # not yet
        aged(0.9)
        # From the snapshot it had (the re-read it started may even have ended meanwhile).
        assert breaker.admit(in_memory=True).state == CLOSED
        await reread()
        with pytest.raises(CircuitOpen):
            breaker.admit(in_memory=True)
        breaker._snapshot = replace(breaker._snapshot, state=CLOSED)
        aged(0.9)
        assert not breaker.store_due()  # not due: memory, and the re-read started
        await reread()
        breaker._snapshot = replace(breaker._snapshot, state=CLOSED)
        aged(1.0)
        assert breaker.store_due()
        with pytest.raises(StoreNeeded):
            breaker.admit(in_memory=True)

    asyncio.run(run())
