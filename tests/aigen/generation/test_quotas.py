"""Caller admission (aigen.generation.quotas) on a real Redis (one Lua script
per admission) and in process memory: the sliding requests-per-minute window
and its Retry-After, the token budget with reservations corrected from the
answer, expired reservations, periods. The clock is moved, never slept on."""
from __future__ import annotations

from datetime import UTC, datetime

import pytest

from aigen.exceptions import QuotaExceeded
from aigen.generation.quotas import (
    CallerLimits,
    Quotas,
    Reservation,
    period_bounds,
    quota_admit,
    quota_settle,
    quotas,
)

START = datetime(2026, 3, 10, 12, 0, tzinfo=UTC).timestamp()


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(Quotas, "clock", staticmethod(clock))
    return clock


@pytest.fixture(params=["redis", "memory"])
def store(request, db):
    """Each test runs on Redis (shared) and in memory (per process)."""
    if request.param == "redis":
        request.getfixturevalue("on_redis")
    return request.param


def refused(user_id: int, limits: CallerLimits, estimate: int = 10) -> QuotaExceeded:
    with pytest.raises(QuotaExceeded) as caught:
        quota_admit(user_id=user_id, limits=limits, estimate=estimate)
    return caught.value


def test_requests_per_minute_is_a_sliding_window_with_the_time_until_it_frees(store, clock):
    limits = CallerLimits(rpm=3)
    for _ in range(3):
        quota_admit(user_id=1, limits=limits, estimate=1)
        clock.now += 10  # admitted at +0, +10, +20
    err = refused(1, limits)  # at +30
    assert err.code == "rate_limit_exceeded" and err.status == 429
    assert err.retry_after == pytest.approx(30)  # the +0 admission leaves the window at +60
    clock.now = START + 60.5
    quota_admit(user_id=1, limits=limits, estimate=1)  # one freed
    assert refused(1, limits).retry_after == pytest.approx(9.5)  # the +10 one frees at +70
    quota_admit(user_id=2, limits=limits, estimate=1)  # another caller has its own window


def test_a_refused_request_does_not_take_a_place_in_the_window(store, clock):
    limits = CallerLimits(rpm=1)
    quota_admit(user_id=1, limits=limits, estimate=1)
    for _ in range(5):
        clock.now += 1
        refused(1, limits)
    clock.now = START + 60.01
    quota_admit(user_id=1, limits=limits, estimate=1)


def test_budget_reserves_the_estimate_and_settles_at_the_reported_usage(store, clock):
    limits = CallerLimits(budget=1000)
    first = quota_admit(user_id=1, limits=limits, estimate=600)
    second = quota_admit(user_id=1, limits=limits, estimate=600)  # 600 held < 1000: admitted
    held = refused(1, limits)  # 1200 held: full until one settles
    assert held.code == "insufficient_quota" and held.retry_after == pytest.approx(1)
    quota_settle(first, used=150)
    quota_settle(first, used=150)  # once: a second settle counts nothing
    third = quota_admit(user_id=1, limits=limits, estimate=600)  # 150 spent + 600 held
    quota_settle(second, used=300)
    quota_settle(third, used=600)  # 1050 spent: one request's worth over, at most
    spent = refused(1, limits)
    day_end = datetime(2026, 3, 11, tzinfo=UTC).timestamp()
    assert spent.retry_after == pytest.approx(day_end - clock.now)  # the period's end
    clock.now = day_end + 1  # a new day: a new budget
    quota_admit(user_id=1, limits=limits, estimate=600)


def test_a_reservation_never_settled_expires(store, clock, settings):
    settings.AIGEN = {**settings.AIGEN, "QUOTA_RESERVATION_SECONDS": 30}
    limits = CallerLimits(budget=100)
    quota_admit(user_id=1, limits=limits, estimate=100)  # its worker dies: never settled
    refused(1, limits)
    clock.now += 31
    quota_settle(quota_admit(user_id=1, limits=limits, estimate=100), used=40)
    quota_admit(user_id=1, limits=limits, estimate=100)  # 40 spent, nothing else held


def test_a_monthly_budget_runs_to_the_end_of_the_utc_month(store, clock):
    limits = CallerLimits(budget=10, period="month")
    quota_settle(quota_admit(user_id=1, limits=limits, estimate=10), used=10)
    clock.now = datetime(2026, 3, 31, 23, 0, tzinfo=UTC).timestamp()
    assert refused(1, limits).retry_after == pytest.approx(3600)
    clock.now += 3600
    quota_admit(user_id=1, limits=limits, estimate=10)


def test_an_answer_without_usage_keeps_the_estimate_spent(store, clock):
    limits = CallerLimits(budget=100)
    quota_settle(quota_admit(user_id=1, limits=limits, estimate=60), used=None)
    quota_settle(quota_admit(user_id=1, limits=limits, estimate=60), used=None)
    assert refused(1, limits).retry_after > 1  # 120 spent: the period's end


def test_on_redis_every_process_shares_one_count(on_redis, db, clock):
    limits = CallerLimits(budget=100)
    other = Quotas()  # another worker: nothing of this one's memory
    mine = quota_admit(user_id=1, limits=limits, estimate=60)
    other.admit(Reservation(user_id=1, limits=limits, estimate=60))  # 60 held (here) < 100
    with pytest.raises(QuotaExceeded):
        other.admit(Reservation(user_id=1, limits=limits, estimate=60))  # 120 held across both
    other.settle(mine, 10)  # settled by any worker
    other.admit(Reservation(user_id=1, limits=limits, estimate=60))  # 10 spent + 60 held
    assert quotas.memory._held == {} and other.memory._held == {}  # nothing counted in memory


def test_period_bounds():
    assert period_bounds("day", START) == (int(datetime(2026, 3, 10, tzinfo=UTC).timestamp()),
                                           int(datetime(2026, 3, 11, tzinfo=UTC).timestamp()))
    december = datetime(2026, 12, 31, tzinfo=UTC).timestamp()
    assert period_bounds("month", december) == (int(datetime(2026, 12, 1, tzinfo=UTC).timestamp()),
                                                int(datetime(2027, 1, 1, tzinfo=UTC).timestamp()))
