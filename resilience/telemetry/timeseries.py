"""Per-bucket call statistics of one upstream, for the dashboard's chart.

`upstream_timeseries()` cuts the last `window` into equal buckets aligned to
the wall clock (so a bucket keeps its boundaries from one refresh to the next)
and reports, per bucket, the calls, the failed calls and the p95 latency of
the calls that reached the upstream. Like the other statistics it reads the
call logs, so calls still in a process's buffer are not counted until flushed.
"""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from django.utils import timezone

from resilience.models import FAILED_OUTCOMES, CallLog

FAILED = frozenset(str(outcome) for outcome in FAILED_OUTCOMES)


def _p95(values: list[float]) -> float | None:
    """Nearest-rank 95th percentile (the rule resilience.selectors uses)."""
    if not values:
        return None
    values.sort()
    return round(values[min(len(values) - 1, round(0.95 * (len(values) - 1)))], 3)


def upstream_timeseries(*, name: str, window: timedelta = timedelta(hours=1),
                        bucket: timedelta = timedelta(minutes=1),
                        now: datetime | None = None) -> list[dict[str, Any]]:
    """Buckets of upstream `name`'s calls over the last `window`, oldest first.

    Each bucket is `{"start": ISO time, "calls", "errors", "p95_ms"}`;
    `p95_ms` is None when no call of the bucket reached the upstream (cache
    hits and breaker rejections have no upstream latency). The last bucket is
    the one containing `now`, so it is still filling. Raises ValueError when
    `bucket` is not positive or does not divide `window`.
    """
    step = bucket.total_seconds()
    if step <= 0 or window.total_seconds() % step:
        raise ValueError(f"bucket {bucket} must be positive and divide window {window}")
    count = int(window.total_seconds() // step)
    now = now or timezone.now()
    epoch = now.timestamp()
    end = datetime.fromtimestamp(epoch - epoch % step + step, tz=now.tzinfo or UTC)
    start = end - window

    calls = [0] * count
    errors = [0] * count
    latencies: list[list[float]] = [[] for _ in range(count)]
    rows = CallLog.objects.filter(upstream=name, created_at__gte=start, created_at__lt=end).values_list(
        "created_at", "outcome", "latency_ms", "attempts")
    for created_at, outcome, latency_ms, attempts in rows.iterator(chunk_size=5000):
        index = int((created_at - start).total_seconds() // step)
        if not 0 <= index < count:
            continue
        calls[index] += 1
        if outcome in FAILED:
            errors[index] += 1
        if attempts:
            latencies[index].append(latency_ms)
    return [
        {"start": (start + i * bucket).isoformat(), "calls": calls[i], "errors": errors[i],
         "p95_ms": _p95(latencies[i])}
        for i in range(count)
    ]
