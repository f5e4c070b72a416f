"""Per-bucket call statistics of one upstream, for the dashboard's chart.

`upstream_timeseries()` cuts the last `window` into equal buckets aligned to
the wall clock (so a bucket keeps its boundaries from one refresh to the next)
and reports, per bucket, the calls, the failed calls and the p95 latency of
the calls that reached the upstream. It reads the minute rollups (hour
rollups when the buckets are whole hours): one row per minute and endpoint
whatever the traffic. Calls still in a process's buffer are not counted until
flushed.
"""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from django.utils import timezone

from resilience.models import HourRollup, MinuteRollup
from resilience.telemetry import histogram


def upstream_timeseries(*, name: str, window: timedelta = timedelta(hours=1),
                        bucket: timedelta = timedelta(minutes=1),
                        now: datetime | None = None, endpoint: str | None = None) -> list[dict[str, Any]]:
    """Buckets of upstream `name`'s calls over the last `window`, oldest first.

    Each bucket is `{"start": ISO time, "calls", "errors", "p95_ms"}`;
    `p95_ms` is None when no call of the bucket reached the upstream (cache
    hits and breaker rejections have no upstream latency). The last bucket is
    the one containing `now`, so it is still filling. Raises ValueError when
    `bucket` is not a whole number of minutes or does not divide `window`
    (the rollups hold minutes).
    """
    step = int(bucket.total_seconds())
    if step <= 0 or step != bucket.total_seconds() or step % 60 or window.total_seconds() % step:
        raise ValueError(f"bucket {bucket} must be whole minutes and divide window {window}")
    count = int(window.total_seconds() // step)
    now = now or timezone.now()
    epoch = now.timestamp()
    end = datetime.fromtimestamp(epoch - epoch % step + step, tz=now.tzinfo or UTC)
    start = end - window

    calls = [0] * count
    errors = [0] * count
    latencies: list[list[dict[str, int]]] = [[] for _ in range(count)]
    model = HourRollup if step % 3600 == 0 else MinuteRollup
    rows = model.objects.filter(upstream=name, start__gte=start, start__lt=end)
    if endpoint is not None:
        rows = rows.filter(endpoint=endpoint)
    for at, n, failed, latency in rows.order_by().values_list("start", "calls", "errors", "latency"):
        index = int((at - start).total_seconds() // step)
        if not 0 <= index < count:
            continue
        calls[index] += n
        errors[index] += failed
        if latency:
            latencies[index].append(latency)
    return [
        {"start": (start + i * bucket).isoformat(), "calls": calls[i], "errors": errors[i],
         "p95_ms": histogram.percentiles(_merged(latencies[i]), (0.95,))[0]}
        for i in range(count)
    ]


def _merged(parts: list[dict[str, int]]) -> dict[str, int]:
    # One row per bucket is the common case (one minute, one endpoint): no copy.
    if len(parts) == 1:
        return parts[0]
    merged: dict[str, int] = {}
    for part in parts:
        for key, count in part.items():
            merged[key] = merged.get(key, 0) + count
    return merged
