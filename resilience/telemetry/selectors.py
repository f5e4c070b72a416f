"""Read-side queries: per-upstream statistics, live breaker state, call logs.

Statistics are computed from call logs (flushed every second or so, so the
last moment may lag) and breaker events; live breaker state comes from the
shared breaker storage.
"""
from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.db.models import Count, Q, QuerySet, Sum
from django.utils import timezone

from resilience.breaker import CLOSED, OPEN, SharedBreaker
from resilience.models import CACHED_OUTCOMES, FAILED_OUTCOMES, BreakerEvent, CallLog, Outcome, Upstream

WINDOWS: dict[str, timedelta] = {"5m": timedelta(minutes=5), "1h": timedelta(hours=1),
                                 "24h": timedelta(hours=24)}


def breaker_status(upstream: Upstream) -> dict[str, Any]:
    """Live breaker state of one upstream: state, failures, retry_after (open)."""
    if not upstream.breaker_enabled:
        return {"state": "disabled", "failures": 0, "fail_max": upstream.breaker_fail_max,
                "opened_at": None, "retry_after": None}
    return SharedBreaker.status_of(upstream.name, fail_max=upstream.breaker_fail_max,
                                   reset_timeout=upstream.breaker_reset_timeout)


def _percentiles(latencies: QuerySet, count: int, qs: tuple[float, ...]) -> list[float | None]:
    """Nearest-rank percentiles computed by the database (one ORDER BY ...
    OFFSET per percentile), so a busy 24 h window is never loaded into Python."""
    if not count:
        return [None] * len(qs)
    ordered = latencies.order_by("latency_ms").values_list("latency_ms", flat=True)
    return [round(ordered[min(count - 1, max(0, round(q * (count - 1))))], 3) for q in qs]


def upstream_stats(*, name: str, window: timedelta, now: Any = None) -> dict[str, Any]:
    """Calls, error rate, p50/p95/p99 latency, cache hit rate, retries and
    breaker trips of upstream `name` over the last `window`."""
    now = now or timezone.now()
    since = now - window
    logs = CallLog.objects.filter(upstream=name, created_at__gte=since, created_at__lte=now)
    totals = logs.aggregate(
        calls=Count("id"),
        errors=Count("id", filter=Q(outcome__in=FAILED_OUTCOMES)),
        cached=Count("id", filter=Q(outcome__in=CACHED_OUTCOMES)),
        attempts_total=Sum("attempts", filter=Q(attempts__gt=0)),
        upstream_calls=Count("id", filter=Q(attempts__gt=0)),
    )
    calls = totals["calls"]
    # Latency of calls that reached the upstream; cache hits would flatter it.
    p50, p95, p99 = _percentiles(logs.filter(attempts__gt=0), totals["upstream_calls"], (0.50, 0.95, 0.99))
    trips = BreakerEvent.objects.filter(upstream=name, to_state=OPEN, created_at__gte=since,
                                        created_at__lte=now).count()
    outcomes = dict(logs.values_list("outcome").annotate(n=Count("id")).values_list("outcome", "n"))
    return {
        "window_seconds": int(window.total_seconds()),
        "calls": calls,
        "errors": totals["errors"],
        "error_rate": round(totals["errors"] / calls, 4) if calls else 0.0,
        "p50_ms": p50,
        "p95_ms": p95,
        "p99_ms": p99,
        "cache_hit_rate": round(totals["cached"] / calls, 4) if calls else 0.0,
        "retries": (totals["attempts_total"] or 0) - totals["upstream_calls"],
        "breaker_trips": trips,
        "outcomes": {str(k): v for k, v in outcomes.items()},
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
              since: Any = None, until: Any = None) -> QuerySet[CallLog]:
    logs = CallLog.objects.filter(upstream=name)
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


__all__ = ["CLOSED", "OPEN", "WINDOWS", "Outcome", "breaker_status", "call_logs",
           "recent_failures", "upstream_overview", "upstream_stats"]
