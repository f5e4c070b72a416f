"""One upstream over a chosen range, for its dashboard page: latency
percentiles, outcomes and retries per bucket, the breaker's state bands and
the latest failed calls.

Every read is bounded whatever the traffic: the series come from the rollups
(`RANGES` says which table: minute rows up to an hour, hour rows beyond, so a
week is 168 rows per endpoint), the breaker bands from at most `MAX_EVENTS`
breaker events, the failures from at most `MAX_FAILURES` call-log rows read
through the (upstream, created_at) index. Call-log rows are never counted.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.utils import timezone

from resilience.models import FAILED_OUTCOMES, BreakerEvent, CallLog, HourRollup, MinuteRollup, Outcome
from resilience.telemetry import histogram
from resilience.telemetry.selectors import breaker_status, upstream_stats

MAX_EVENTS = 1000
MAX_FAILURES = 20
PERCENTILES = (0.50, 0.95, 0.99)


@dataclass(frozen=True)
class Range:
    """A time range of the page: its length and its bucket (seconds)."""

    key: str
    label: str
    window: timedelta
    step: int

    @property
    def model(self) -> type:
        return HourRollup if self.step % 3600 == 0 else MinuteRollup


RANGES: dict[str, Range] = {r.key: r for r in (
    Range("15m", "15 min", timedelta(minutes=15), 60),
    Range("1h", "1 hour", timedelta(hours=1), 60),
    Range("24h", "24 hours", timedelta(hours=24), 3600),
    Range("7d", "7 days", timedelta(days=7), 3600),
)}
DEFAULT_RANGE = "1h"


def _epoch(moment: datetime) -> int:
    return int(moment.timestamp())


def upstream_series(*, name: str, span: Range, now: datetime) -> dict[str, Any]:
    """Columns over the range, oldest bucket first: `t` (bucket starts, epoch
    seconds), `calls`, `errors`, `retries`, `p50_ms`/`p95_ms`/`p99_ms` (None
    where no call reached the upstream) and `outcomes` ({outcome: counts},
    only outcomes seen). The last bucket contains `now` and is still filling."""
    step, count = span.step, int(span.window.total_seconds() // span.step)
    end = _epoch(now) - _epoch(now) % step + step
    start = end - count * step
    calls, errors, retries = [0] * count, [0] * count, [0] * count
    outcomes: dict[str, list[int]] = {}
    latency: list[dict[int, int]] = [{} for _ in range(count)]
    rows = span.model.objects.filter(upstream=name, start__gte=datetime.fromtimestamp(start, UTC),
                                      start__lt=datetime.fromtimestamp(end, UTC))
    for at, n, failed, retried, seen, hist in rows.order_by().values_list(
            "start", "calls", "errors", "retries", "outcomes", "latency"):
        i = (_epoch(at) - start) // step
        if not 0 <= i < count:
            continue
        calls[i] += n
        errors[i] += failed
        retries[i] += retried
        for outcome, k in (seen or {}).items():
            outcomes.setdefault(outcome, [0] * count)[i] += k
        histogram.merge(latency[i], hist or {})
    percentiles = [histogram.percentiles(h, PERCENTILES) for h in latency]
    order = {str(o): n for n, o in enumerate(Outcome)}
    return {
        "step_seconds": step,
        "t": [start + i * step for i in range(count)],
        "calls": calls, "errors": errors, "retries": retries,
        "p50_ms": [p[0] for p in percentiles],
        "p95_ms": [p[1] for p in percentiles],
        "p99_ms": [p[2] for p in percentiles],
        "outcomes": dict(sorted(outcomes.items(), key=lambda kv: order.get(kv[0], len(order)))),
    }


def breaker_bands(*, name: str, since: datetime, now: datetime, live_state: str) -> list[dict[str, Any]]:
    """The breaker's states from `since` to `now` as `[{start, end, state}]`
    (epoch seconds, contiguous), from the breaker events (the latest
    `MAX_EVENTS` of the range). Before the first event of the range the state
    is that event's `from_state`; with no event in the range, the state the
    last earlier event left, else the live state."""
    events = list(BreakerEvent.objects.filter(upstream=name, created_at__gte=since, created_at__lte=now)
                  .order_by("-created_at", "-id").values_list("created_at", "from_state", "to_state")
                  [:MAX_EVENTS])[::-1]
    if events:
        state = events[0][1] or "closed"
        first = events[0][0] if len(events) == MAX_EVENTS else since
    else:
        before = (BreakerEvent.objects.filter(upstream=name, created_at__lt=since)
                  .order_by("-created_at", "-id").values_list("to_state", flat=True).first())
        state = before or live_state
        first = since
    end = round(now.timestamp(), 3)
    points = [(round(first.timestamp(), 3), state)]
    points += [(round(at.timestamp(), 3), to_state) for at, _, to_state in events]
    bands: list[dict[str, Any]] = []
    for i, (moment, current) in enumerate(points):
        until = points[i + 1][0] if i + 1 < len(points) else end
        if bands and bands[-1]["state"] == current:
            bands[-1]["end"] = max(bands[-1]["end"], until)
        elif until > moment or i + 1 == len(points):
            bands.append({"start": moment, "end": max(moment, until), "state": current})
    return bands


def recent_failures(*, name: str, since: datetime) -> list[dict[str, Any]]:
    """The latest `MAX_FAILURES` failed calls since `since`, newest first."""
    rows = (CallLog.objects.filter(upstream=name, created_at__gte=since, outcome__in=FAILED_OUTCOMES)
            .order_by("-created_at", "-id")
            .values("created_at", "method", "path", "status", "outcome", "latency_ms", "attempts",
                    "endpoint", "request_id", "error")[:MAX_FAILURES])
    return [{**row, "created_at": row["created_at"].isoformat()} for row in rows]


def upstream_detail(*, upstream: Any, span: Range, now: datetime | None = None) -> dict[str, Any]:
    """Everything the per-upstream page shows over `range`, JSON-ready."""
    now = now or timezone.now()
    series = upstream_series(name=upstream.name, span=span, now=now)
    since = datetime.fromtimestamp(series["t"][0], UTC)
    breaker = breaker_status(upstream)
    return {
        "name": upstream.name,
        "base_url": upstream.base_url,
        "enabled": upstream.enabled,
        "generated_at": now.isoformat(),
        "range": {"key": span.key, "label": span.label, "seconds": int(span.window.total_seconds()),
                  "step_seconds": span.step, "start": series["t"][0],
                  "source": span.model.__name__},
        "breaker": breaker,
        "stats": upstream_stats(name=upstream.name, window=span.window, now=now),
        "series": series,
        "breaker_bands": breaker_bands(name=upstream.name, since=since, now=now,
                                       live_state=breaker["state"] if breaker["state"] != "disabled"
                                       else "closed"),
        "failures": recent_failures(name=upstream.name, since=since),
    }
