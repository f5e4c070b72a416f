"""The operations dashboard: one page for staff with every upstream's live
breaker, recent statistics and last hour, plus the cache backend's state.

`dashboard` renders the page with the data in it (first paint needs no
script); the page's script then polls `dashboard_data`, the same snapshot as
JSON, and updates it in place. Both are for staff with view permission on
upstreams and call logs (resilience.ops.permissions): anyone else is sent to the
admin login, or refused with 403.

The buffered call logs of this process are flushed before reading, so the
latest calls show; other processes' rows arrive within their flush interval.
"""
from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth.decorators import permission_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from resilience.advisor.panels import advisor_panels
from resilience.alerts.services import alerts_firing
from resilience.cache.ops import cache_stats
from resilience.client.accounts import accounts_summary
from resilience.client.quota import admission_state
from resilience.jobs.selectors import upstream_health
from resilience.models import Upstream
from resilience.ops.permissions import DASHBOARD_READ
from resilience.telemetry.calllog import call_log_flush
from resilience.telemetry.selectors import WINDOWS, breaker_status, upstream_stats
from resilience.telemetry.timeseries import upstream_timeseries

STATS_WINDOW = "5m"
CHART_WINDOW = timedelta(hours=1)
CHART_BUCKET = timedelta(minutes=1)
# Seconds between the page's refreshes; `?refresh=N` overrides within these bounds.
REFRESH_DEFAULT, REFRESH_MIN, REFRESH_MAX = 5, 1, 300


# -- formatting: done once, here, for the page and its script alike -----------------
def _ms(value: float | None) -> str:
    if value is None:
        return "\u2014"
    if value >= 1000:
        return f"{value / 1000:.2f} s"
    return f"{value:.1f} ms" if value < 10 else f"{value:.0f} ms"


def _rate(value: float) -> str:
    return f"{value * 100:.1f}%"


def _breaker_detail(breaker: dict[str, Any]) -> str:
    state = breaker["state"]
    if state == "disabled":
        return "breaker disabled"
    failures = f"{breaker['failures']}/{breaker['fail_max']} consecutive failures"
    if state == "open" and breaker.get("retry_after") is not None:
        return f"next probe in {breaker['retry_after']:.0f} s \u00b7 {failures}"
    if state == "half-open":
        return f"probing \u00b7 {failures}"
    return failures


def _probe_display(probe: dict[str, Any] | None) -> str:
    """The last scheduled health probe (resilience.jobs.probes), for people."""
    if probe is None:
        return "not probed"
    at = probe["at"][11:19]  # hh:mm:ss of the ISO time (UTC)
    if probe["healthy"]:
        return f"healthy \u00b7 {at}"
    return f"unhealthy ({probe['status'] or probe['error'] or 'no answer'}) \u00b7 {at}"


def _upstream_display(breaker: dict[str, Any], stats: dict[str, Any],
                      probe: dict[str, Any] | None = None) -> dict[str, str]:
    return {
        "state": breaker["state"],
        "probe": _probe_display(probe),
        "breaker_detail": _breaker_detail(breaker),
        "calls": f"{stats['calls']:,}",
        "errors": f"{stats['errors']:,}",
        "error_rate": _rate(stats["error_rate"]),
        "p50": _ms(stats["p50_ms"]),
        "p95": _ms(stats["p95_ms"]),
        "p99": _ms(stats["p99_ms"]),
        "hit_rate": _rate(stats["cache_hit_rate"]),
        "retries": f"{stats['retries']:,}",
        "trips": f"{stats['breaker_trips']:,}",
    }


def _cache_display(stats: dict[str, Any]) -> dict[str, str]:
    return {
        "backend": stats["backend"],
        "fallback": "yes: Redis is down, local memory serves" if stats["fallback"] else "no",
        "scope": stats["scope"],
        "hit_rate": _rate(stats["hit_rate"]),
        **{field: f"{stats[field]:,}" for field in ("hits", "misses", "sets", "deletes", "errors",
                                                    "fallbacks")},
    }


def _admission(row: Upstream) -> dict[str, Any]:
    """An upstream with endpoint limits: its admission state (callers waiting for room and their
    waits by priority, resilience.client.quota) and one line for people; nothing otherwise."""
    if not any(e.rpm_limit or e.tpm_limit for e in row.endpoints.all()):
        return {"admission": None, "admission_line": ""}
    state = admission_state(row.name)
    parts = [f"{name}: {p['waiting']} waiting, {p['admitted']} admitted, wait mean {p['mean_wait_s']:.2f} s "
             f"max {p['max_wait_s']:.2f} s" for name, p in state["priorities"].items()]
    line = f"last {state['window_minutes']} min \u2014 " + "; ".join(parts)
    return {"admission": state, "admission_line": line}


# -- selector ------------------------------------------------------------------------
def dashboard_snapshot(*, now: Any = None) -> dict[str, Any]:
    """Everything the dashboard shows, JSON-ready: each upstream's policy
    summary, live breaker, statistics over `STATS_WINDOW` and per-minute
    series over the last hour; the cache backend's statistics; the alerts
    firing (most severe first). Each upstream and the cache carry a
    `display` dict of the same values formatted for people."""
    now = now or timezone.now()
    upstreams = []
    probes = upstream_health()["probed"]  # each probed upstream's last probe
    for row in Upstream.objects.order_by("name").prefetch_related("endpoints"):
        breaker = breaker_status(row)
        stats = upstream_stats(name=row.name, window=WINDOWS[STATS_WINDOW], now=now)
        upstreams.append({
            "name": row.name,
            "base_url": row.base_url,
            "description": row.description,
            "enabled": row.enabled,
            "breaker": breaker,
            "stats": stats,
            "series": upstream_timeseries(name=row.name, window=CHART_WINDOW, bucket=CHART_BUCKET, now=now),
            "probe": probes.get(row.name),
            "display": _upstream_display(breaker, stats, probes.get(row.name)),
            "accounts": accounts_summary(row.endpoints.all()),  # one line; "" without accounts
            **_admission(row),
        })
    cache = cache_stats()
    alerts = [{"rule": a.rule.name, "subject": a.subject, "severity": a.rule.severity,
               "condition": a.rule.condition_text(), "value": a.value,
               "fired_at": a.fired_at.isoformat() if a.fired_at else None} for a in alerts_firing()]
    return {
        "generated_at": now.isoformat(),
        "alerts": alerts,
        "stats_window": STATS_WINDOW,
        "chart": {"window_seconds": int(CHART_WINDOW.total_seconds()),
                  "bucket_seconds": int(CHART_BUCKET.total_seconds())},
        "upstreams": upstreams,
        "cache": {**cache, "display": _cache_display(cache)},
    }


def _refresh_seconds(request: HttpRequest) -> int:
    try:
        seconds = int(request.GET.get("refresh", REFRESH_DEFAULT))
    except ValueError:
        seconds = REFRESH_DEFAULT
    return min(REFRESH_MAX, max(REFRESH_MIN, seconds))


@require_GET
@never_cache
@staff_member_required
@permission_required(DASHBOARD_READ, raise_exception=True)
def dashboard(request: HttpRequest) -> HttpResponse:
    call_log_flush()
    snapshot = dashboard_snapshot()
    context = {
        **admin.site.each_context(request),
        "title": "Upstream dashboard",
        "snapshot": snapshot,
        "refresh_seconds": _refresh_seconds(request),
        "advisor": advisor_panels(),
    }
    return render(request, "resilience/dashboard.html", context)


@require_GET
@never_cache
@staff_member_required
@permission_required(DASHBOARD_READ, raise_exception=True)
def dashboard_data(request: HttpRequest) -> JsonResponse:
    call_log_flush()
    return JsonResponse(dashboard_snapshot())
