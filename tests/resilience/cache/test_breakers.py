"""The shared breakers' state as the cache holds it, read without a breaker
(what telemetry shows), on the same clock the breakers measure by."""
from __future__ import annotations

import pytest

from resilience.cache.breakers import CLOSED, OPEN, breaker_forced, breaker_name, breaker_status_of
from resilience.client.breaker import SharedBreaker


@pytest.fixture
def tripped(on_redis, breaker_clock):
    breaker = SharedBreaker("api/primary", fail_max=2, reset_timeout=30, probe_interval=5)
    for _ in range(2):
        breaker.record_failure(breaker.admit(), RuntimeError("down"))
    return breaker


def test_a_breaker_name_is_the_upstreams_for_its_implicit_endpoint():
    assert breaker_name("api", "") == "api"
    assert breaker_name("api", "primary") == "api/primary"


def test_an_untouched_breaker_reads_closed(on_redis):
    assert breaker_status_of("nobody", fail_max=3, reset_timeout=30) == {
        "state": CLOSED, "failures": 0, "fail_max": 3, "opened_at": None, "retry_after": None}


def test_an_open_breaker_reads_as_its_breaker_sees_it(tripped, breaker_clock):
    breaker_clock.advance(2)
    read = breaker_status_of("api/primary", fail_max=2, reset_timeout=30, probe_interval=5)
    assert read["state"] == OPEN and read["failures"] == 2
    assert read["retry_after"] == 3.0  # the probe interval less the two seconds moved
    assert read == tripped.status()


def test_a_forced_opening_reads_until_it_ends(on_redis, breaker_clock):
    breaker = SharedBreaker("api/forced", fail_max=2, reset_timeout=30)
    assert breaker.force_open(seconds=10, by="ops", reason="maintenance")
    assert breaker_forced("api/forced")["by"] == "ops"
    breaker_clock.advance(11)
    assert breaker_forced("api/forced") is None
