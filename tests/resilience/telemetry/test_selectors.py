"""Statistics read from rollups: percentiles agree with the exact ones, each
window reads the right buckets, and the count of rows read does not grow with
traffic."""
from __future__ import annotations

import math
import random
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from resilience.telemetry import selectors
from resilience.telemetry.calllog import call_log_flush, call_log_record
from resilience.telemetry.selectors import WINDOWS, upstream_stats
from tests.resilience.telemetry.conftest import NOW, Call

pytestmark = pytest.mark.django_db


def exact(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def latencies(kind: str) -> list[float]:
    rng = random.Random(kind)
    if kind == "skewed":
        return [rng.lognormvariate(4.0, 1.0) for _ in range(5000)]
    if kind == "bimodal":
        return [rng.gauss(8.0, 1.0) if rng.random() < 0.8 else rng.gauss(1500.0, 200.0) for _ in range(5000)]
    return [250.0] * 3000  # constant


@pytest.mark.parametrize("kind", ["skewed", "bimodal", "constant"])
@pytest.mark.parametrize("window", ["5m", "24h"])
def test_percentiles_from_rollups_are_within_2_percent_of_exact_nearest_rank(kind, window):
    values = latencies(kind)
    for index, value in enumerate(values):
        # Spread over the last four minutes, as several flushes of one or more workers would write them.
        call_log_record(Call(latency_ms=value, created=NOW.timestamp() - 240 + index % 240, sample_rate=0.0))
        if index % 997 == 0:
            call_log_flush()
    call_log_flush()
    stats = upstream_stats(name="api", window=WINDOWS[window], now=NOW)
    assert stats["calls"] == len(values)
    for q, key in ((0.50, "p50_ms"), (0.95, "p95_ms"), (0.99, "p99_ms")):
        truth = exact(values, q)
        assert abs(stats[key] - truth) <= 0.02 * truth, (kind, key, stats[key], truth)


def test_windows_read_minutes_hours_or_days_and_cover_at_least_the_window(monkeypatch):
    now = NOW.timestamp()
    week = 7 * 86400
    for age, outcome in ((30, "ok"), (4 * 60, "ok"), (50 * 60, "timeout"), (5 * 3600, "ok"),
                         (23 * 3600, "http_error"), (3 * 86400, "ok"), (8 * 86400, "ok"),
                         # a week ago: in the window's first hours (read from hour rows), in its
                         # first hour rounded out, and just before it
                         (week - 1800, "ok"), (week + 1200, "ok"), (week + 2400, "ok")):
        call_log_record(Call(created=now - age, outcome=outcome, status=200 if outcome == "ok" else None,
                             sample_rate=0.0))
    call_log_flush()
    calls = {name: upstream_stats(name="api", window=window, now=NOW)["calls"]
             for name, window in WINDOWS.items()}
    assert calls == {"5m": 2, "1h": 3, "24h": 5, "7d": 8}
    # Read hour by hour instead of whole days in between: the same calls.
    by_days = upstream_stats(name="api", window=WINDOWS["7d"], now=NOW)
    monkeypatch.setattr(selectors, "DAILY_FROM", timedelta(days=365))
    assert upstream_stats(name="api", window=WINDOWS["7d"], now=NOW) == by_days
    day = upstream_stats(name="api", window=WINDOWS["24h"], now=NOW)
    assert (day["errors"], day["error_rate"]) == (2, 0.4)
    assert day["outcomes"] == {"http_error": 1, "ok": 3, "timeout": 1}
    assert day["window_seconds"] == 86400


def test_stats_cost_one_rollup_query_whatever_the_traffic():
    def queries_for(calls: int) -> tuple[int, int]:
        for index in range(calls):
            call_log_record(Call(created=NOW.timestamp() - index % 3600, latency_ms=1 + index % 90,
                                 sample_rate=0.0))
        call_log_flush()
        with CaptureQueriesContext(connection) as captured:
            stats = upstream_stats(name="api", window=timedelta(hours=1), now=NOW)
        return len(captured), stats["calls"]

    quiet, busy = queries_for(100), queries_for(20_000)
    assert quiet == (2, 100)  # rollups + breaker trips
    assert busy == (2, 20_100)


def test_an_upstream_without_calls_has_empty_stats():
    stats = upstream_stats(name="idle", window=WINDOWS["7d"], now=NOW)
    assert (stats["calls"], stats["error_rate"], stats["p95_ms"], stats["outcomes"]) == (0, 0.0, None, {})
