"""Write-side operations on upstreams, shared by the admin, the API and the
management commands (they stay thin and call these)."""
from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.core.cache import cache

from resilience import exceptions as errors
from resilience.client import reset_clients, upstream_client
from resilience.models import Upstream
from resilience.telemetry.selectors import breaker_status


def _get(name: str) -> Upstream:
    try:
        return Upstream.objects.get(name=name)
    except Upstream.DoesNotExist:
        raise errors.UnknownUpstream(f"no upstream named {name!r}", upstream=name) from None


def breaker_reset(*, name: str) -> dict[str, Any]:
    """Close upstream `name`'s breaker now; returns its new status."""
    upstream = _get(name)
    if upstream.breaker_enabled:
        breaker = upstream_client(name).breaker
        if breaker is not None:
            breaker.reset()
    return breaker_status(upstream)


def upstream_cache_clear(*, name: str) -> int:
    """Remove upstream `name`'s cached responses; returns how many."""
    _get(name)
    upstream_client(name).near.clear()
    return cache.delete_pattern(f"http:{name}:*")


def upstream_probe(*, name: str) -> dict[str, Any]:
    """One real call to the upstream's health path (bypassing the cache)."""
    upstream = _get(name)
    started = time.perf_counter()
    try:
        response = upstream_client(name).get(upstream.health_path or "/", cache=False,
                                             raise_for_status=False)
    except errors.UpstreamError as err:
        return {"ok": False, "status": None, "error": err.as_dict(),
                "latency_ms": round((time.perf_counter() - started) * 1000, 2)}
    return {"ok": response.status_code < 400, "status": response.status_code, "error": None,
            "attempts": response.attempts,
            "latency_ms": round((time.perf_counter() - started) * 1000, 2)}


def upstreams_seed() -> list[str]:
    """Create the built-in upstreams that do not exist yet; returns the created names.

    Existing rows are left alone: the admin owns them once they exist.
    """
    seeds = {
        # The OpenAI-compatible provider (aigen): 60 s reads (a long answer
        # streams for a while), 2 retries on 429/5xx/timeouts waiting 0.5 s
        # then 1 s plus up to 0.5 s of jitter (names that do not resolve and
        # refused connections are not retried at all); POST is retried because
        # a completion request has no side effects. The pool and bulkhead fit
        # an async worker carrying hundreds of generations at once.
        "openai": {
            "base_url": settings.AIGEN.get("OPENAI_BASE_URL", "https://api.openai.com/v1"),
            "description": "OpenAI-compatible chat completions (aigen)",
            "connect_timeout": 3.0, "read_timeout": 60.0, "deadline": 120.0,
            "retry_total": 2, "retry_backoff_factor": 0.5, "retry_backoff_max": 4.0,
            "retry_jitter": 0.5, "retry_statuses": [429, 500, 502, 503, 504],
            "retry_methods": ["GET", "POST"], "retry_after_max": 8.0,
            "breaker_fail_max": 5, "breaker_reset_timeout": 30.0,
            "pool_size": 500, "bulkhead_max": 1000, "bulkhead_wait": 1.0,
            # The model the front door (/v1/chat/completions) routes here.
            "served_models": [settings.AIGEN.get("MODEL", "gpt-4o-mini")],
        },
    }
    created = []
    for name, fields in seeds.items():
        upstream = Upstream(name=name, **fields)
        upstream.full_clean(validate_unique=False)  # the seed itself must be valid
        _, was_created = Upstream.objects.get_or_create(name=name, defaults=fields)
        if was_created:
            created.append(name)
    if created:
        reset_clients()
    return created
