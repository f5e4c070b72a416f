"""Read-side queries: per-upstream statistics, live breaker state, call logs.

Statistics are read from the rollups (resilience.telemetry.rollups), never
from call-log rows, so their cost depends on the window, not on traffic:
windows shorter than `HOURLY_FROM` read minute rows (at most 61 per endpoint
for an hour), longer ones hour rows (25 for a day) and, from `DAILY_FROM`,
day rows for whole days (about 32 rows for a week). A window is rounded out
to whole buckets: it starts at the top of the minute (or hour) containing
`now - window`, so it covers at least the window and at most one bucket more.
Counts lag by the writers' flush interval (a second or so). Breaker trips
come from the breaker events; live breaker state from the shared breaker
storage.
"""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from django.db.models import Q, QuerySet
from django.utils import timezone

from resilience.cache.breakers import CLOSED, HALF_OPEN, OPEN, breaker_name, breaker_status_of
from resilience.models import (
    FAILED_OUTCOMES,
    BreakerEvent,
    CallLog,
    DayRollup,
    HourRollup,
    MinuteRollup,
    Outcome,
    Rollup,
    Upstream,
)
from resilience.telemetry import histogram
from resilience.telemetry.rollups import COUNTERS, RollupDelta, totals

WINDOWS: dict[str, timedelta] = {"5m": timedelta(minutes=5), "1h": timedelta(hours=1),
                                 "24h": timedelta(hours=24), "7d": timedelta(days=7)}
#: Windows at least this long read hour rollups...
HOURLY_FROM = timedelta(hours=6)
#: ...and at least this long read day rollups for the whole UTC days inside them.
DAILY_FROM = timedelta(days=2)
ROLLUP_FIELDS = (*COUNTERS, "outcomes", "latency")


def breaker_status(upstream: Upstream) -> dict[str, Any]:
    """Live breaker state of one upstream: state, failures, retry_after (open).

    An upstream with endpoints has a breaker per endpoint: its own view is
    open when every enabled endpoint's breaker is (retry_after: the first one
    back), half-open while one is probing, else closed; `failures` is the
    most any endpoint has counted and `endpoints_open` says how many are open.
    (Cooldowns and scores: `resilience.client.endpoints.snapshot`.)"""
    if not upstream.breaker_enabled:
        return {"state": "disabled", "failures": 0, "fail_max": upstream.breaker_fail_max,
                "opened_at": None, "retry_after": None}
    limits = {"fail_max": upstream.breaker_fail_max, "reset_timeout": upstream.breaker_reset_timeout,
              "probe_interval": upstream.breaker_probe_interval}
    endpoints = [e.name for e in upstream.endpoints.all() if e.enabled]
    if not endpoints:
        return breaker_status_of(upstream.name, **limits)
    each = [breaker_status_of(breaker_name(upstream.name, name), **limits) for name in endpoints]
    opened = [status for status in each if status["state"] == OPEN]
    if len(opened) == len(each):
        first = min(opened, key=lambda status: status["retry_after"])
        state, opened_at, retry_after = OPEN, first["opened_at"], first["retry_after"]
    else:
        states = {status["state"] for status in each}
        state = CLOSED if states <= {CLOSED, OPEN} else HALF_OPEN
        opened_at = retry_after = None
    return {"state": state, "failures": max(status["failures"] for status in each),
            "fail_max": upstream.breaker_fail_max, "opened_at": opened_at, "retry_after": retry_after,
            "endpoints_open": f"{len(opened)}/{len(each)}"}


def _floor(moment: datetime, step: int) -> datetime:
    epoch = moment.timestamp()
    return datetime.fromtimestamp(epoch - epoch % step, UTC)


def window_rollups(*, name: str, window: timedelta, now: datetime,
                   endpoint: str | None = None) -> tuple[QuerySet, datetime]:
    """The rollup rows covering the last `window` of upstream `name` (one
    endpoint, or all with None) as one query of `ROLLUP_FIELDS` values, and
    the start of the window (rounded out to the minute or the hour).

    Short windows read minute rows; from `HOURLY_FROM` hour rows; from
    `DAILY_FROM` day rows for the whole days inside the window and hour rows
    for the hours before and after them (a week: 6 or 7 day rows and 24 or 25
    hour rows instead of 169 hour rows). Every choice covers the same calls."""
    def rows_of(model: type[Rollup]) -> QuerySet:
        rows = model.objects.filter(upstream=name)
        return rows if endpoint is None else rows.filter(endpoint=endpoint)

    if window < HOURLY_FROM:
        since = _floor(now - window, 60)
        rows = rows_of(MinuteRollup).filter(start__gte=since, start__lte=now)
        return rows.order_by().values(*ROLLUP_FIELDS), since
    since = _floor(now - window, 3600)
    hours = rows_of(HourRollup).filter(start__gte=since, start__lte=now)
    first_day = _floor(since + timedelta(days=1) - timedelta(seconds=1), 86400)  # since, rounded up
    last_day = _floor(now, 86400)
    if window < DAILY_FROM or last_day <= first_day:
        return hours.order_by().values(*ROLLUP_FIELDS), since
    days = rows_of(DayRollup).filter(start__gte=first_day, start__lt=last_day)
    hours = hours.filter(Q(start__lt=first_day) | Q(start__gte=last_day))
    return (hours.order_by().values(*ROLLUP_FIELDS)
            .union(days.order_by().values(*ROLLUP_FIELDS), all=True)), since


def upstream_totals(*, name: str, window: timedelta, now: datetime | None = None,
                    endpoint: str | None = None) -> tuple[RollupDelta, datetime]:
    """Every count of upstream `name` over the last `window`, summed from the
    rollups, and where the window starts."""
    rows, since = window_rollups(name=name, window=window, now=now or timezone.now(), endpoint=endpoint)
    return totals(rows), since


def upstream_stats(*, name: str, window: timedelta, now: Any = None,
                   endpoint: str | None = None) -> dict[str, Any]:
    """Calls, error rate, p50/p95/p99 latency, cache hit rate, retries and
    breaker trips of upstream `name` over the last `window` (rounded out to
    whole rollup buckets, see the module docstring). Percentiles are of the
    calls that reached the upstream, within 1.75% of the exact nearest-rank
    values (resilience.telemetry.histogram)."""
    now = now or timezone.now()
    total, since = upstream_totals(name=name, window=window, now=now, endpoint=endpoint)
    p50, p95, p99 = histogram.percentiles(total.latency, (0.50, 0.95, 0.99))
    # A trip is closed -> open; a failed probe opening it again is the same outage.
    trips = BreakerEvent.objects.filter(upstream=name, from_state=CLOSED, to_state=OPEN,
                                        created_at__gte=since, created_at__lte=now).count()
    calls = total.calls
    return {
        "window_seconds": int(window.total_seconds()),
        "calls": calls,
        "errors": total.errors,
        "error_rate": round(total.errors / calls, 4) if calls else 0.0,
        "p50_ms": p50,
        "p95_ms": p95,
        "p99_ms": p99,
        "cache_hit_rate": round(total.cache_hits / calls, 4) if calls else 0.0,
        "retries": total.retries,
        "breaker_trips": trips,
        "outcomes": {str(k): v for k, v in sorted(total.outcomes.items()) if v},
    }


def upstream_overview(upstream: Upstream, *, window: timedelta = WINDOWS["5m"]) -> dict[str, Any]:
    """One upstream for lists: policy summary, live breaker, recent stats."""
    return {
        "name": upstream.name,
        "base_url": upstream.base_url,
        "enabled": upstream.enabled,
        "breaker": breaker_status(upstream),
        "stats": upstream_stats(name=upstream.name, window=window),
    }


def call_logs(*, name: str, outcome: str | None = None, status: int | None = None,
              since: Any = None, until: Any = None, caller: int | None = None) -> QuerySet[CallLog]:
    """Upstream `name`'s call-log rows, newest first; with `caller`, only the
    calls made for that user."""
    logs = CallLog.objects.filter(upstream=name)
    if caller is not None:
        logs = logs.filter(caller_id=caller)
    if outcome:
        logs = logs.filter(outcome=outcome)
    if status:
        logs = logs.filter(status=status)
    if since:
        logs = logs.filter(created_at__gte=since)
    if until:
        logs = logs.filter(created_at__lte=until)
    return logs.order_by("-created_at", "-id")


def recent_failures(*, name: str, limit: int = 10) -> QuerySet[CallLog]:
    return call_logs(name=name).filter(outcome__in=FAILED_OUTCOMES)[:limit]


__all__ = ["CLOSED", "OPEN", "WINDOWS", "Outcome", "breaker_status", "call_logs", "recent_failures",
           "upstream_overview", "upstream_stats", "upstream_totals", "window_rollups"]
