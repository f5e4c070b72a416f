"""Fixtures for advisor tests: rollups written the way the call-log writer
writes them (rollups_write: minute, hour and day rows from the same deltas),
from synthetic traffic, and policies to judge them against."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from resilience.models import Upstream
from resilience.telemetry.rollups import RollupDelta, minute_of, rollups_write

#: A fixed moment in the middle of a minute; tests pass `now=` to the advisor.
NOW = datetime(2026, 3, 10, 12, 30, 30, tzinfo=UTC)
#: Healthy latencies (ms), cycled: p50 50 ms, p95 about 70 ms.
HEALTHY = tuple(40 + (i * 7) % 35 for i in range(100))


def minute_delta(*, calls: int, latencies: Sequence[float] = HEALTHY, outcome: str = "ok",
                 failed: int = 0, failed_outcome: str = "http_error", attempts: int = 1,
                 signals: dict[str, int] | None = None) -> RollupDelta:
    """One minute of traffic: `calls` calls, the first `failed` of them failing."""
    delta = RollupDelta()
    for index in range(calls):
        delta.add_call(outcome=failed_outcome if index < failed else outcome, attempts=attempts,
                       latency_ms=latencies[index % len(latencies)], cache_hit=False)
    for name, count in (signals or {}).items():
        delta.signals[name] = delta.signals.get(name, 0) + count
    return delta


def traffic(upstream: str, *, since: timedelta, until: timedelta = timedelta(0), now: datetime = NOW,
            every: int = 1, make: Callable[[datetime], RollupDelta]) -> None:
    """Write one delta per `every` minutes from `now - since` to `now - until`."""
    deltas = {}
    moment = now - since
    while moment < now - until:
        deltas[(upstream, "", minute_of(moment.timestamp()))] = make(moment)
        moment += timedelta(minutes=every)
    rollups_write(deltas)


@pytest.fixture
def healthy(policy):
    """An upstream with 8 days of steady healthy traffic (30 calls a minute
    over the last 26 h, 30 calls every 10 minutes before); the last 16
    minutes are `recent(minute)`'s deltas (healthy ones by default)."""
    def make(name: str = "api", *, recent: Callable[[datetime], RollupDelta] | None = None,
             **fields: Any) -> Upstream:
        row = policy(name, **{"read_timeout": 0.5, **fields})  # a timeout that fits 70 ms answers
        traffic(name, since=timedelta(days=8), until=timedelta(hours=26), every=10,
                make=lambda _: minute_delta(calls=30))
        traffic(name, since=timedelta(hours=26), until=timedelta(minutes=16),
                make=lambda _: minute_delta(calls=30))
        traffic(name, since=timedelta(minutes=16), make=recent or (lambda _: minute_delta(calls=30)))
        return row

    return make
