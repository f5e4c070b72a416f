"""Liveness and readiness: `/healthz` answers while the process runs;
`/readyz` reports the database, the cache backend and whether the cache is in
fallback, answering 503 when the database cannot be reached.

A cache in fallback is degraded, not unready: the service still answers. So
is an upstream whose last scheduled health probe failed: `/readyz` then says
`"status": "degraded"` (200) and names it under `checks.upstreams`.
"""
from __future__ import annotations

import time
from typing import Any

from django.core.cache import cache
from django.db import DatabaseError, connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET


def database_status(conn: Any = None) -> dict[str, Any]:
    """Can the database (the default connection, or `conn`) run a query?"""
    conn = conn or connection
    started = time.perf_counter()
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except DatabaseError as err:
        return {"ok": False, "vendor": conn.vendor, "error": type(err).__name__}
    return {"ok": True, "vendor": conn.vendor,
            "latency_ms": round((time.perf_counter() - started) * 1000, 2)}


def cache_status() -> dict[str, Any]:
    backend = getattr(cache, "backend_name", type(cache).__name__)
    return {
        "ok": True,
        "backend": backend,
        "redis_configured": getattr(cache, "redis_configured", False),
        "fallback": getattr(cache, "in_fallback", False),
    }


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@never_cache
@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    database = database_status()
    # Touch the cache so a dead Redis is noticed (and reported) right here.
    cache.get("misc:readyz")
    checks: dict[str, Any] = {"database": database, "cache": cache_status()}
    ready = database["ok"]
    status = "ready" if ready else "unavailable"
    if ready:
        from resilience.jobs.selectors import upstream_health

        checks["upstreams"] = upstream_health()
        if not checks["upstreams"]["ok"]:
            status = "degraded"
    return JsonResponse({"status": status, "checks": checks}, status=200 if ready else 503)
