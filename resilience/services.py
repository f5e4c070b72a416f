"""Write-side operations on upstreams, shared by the admin, the API and the
management commands (they stay thin and call these)."""
from __future__ import annotations

import time
from typing import Any

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


def upstreams_seed(*, using: str = "default") -> list[str]:
    """Create the built-in upstreams that do not exist yet; returns the created names.

    Existing rows are left alone: the admin owns them once they exist (the
    stored `openai` base URL wins over a later OPENAI_BASE_URL; see
    `aigen.conf.base_url_disagreement` and `upstream_openai_sync`).
    Runs after every `migrate` too (`upstreams_seed_after_migrate`).
    """
    from aigen.conf import aigen_settings, openai_base_url

    seeds = {
        # The OpenAI-compatible provider (aigen): 60 s reads (a long answer
        # streams for a while), 2 retries on 429/5xx/timeouts waiting 0.5 s
        # then 1 s plus up to 0.5 s of jitter (names that do not resolve and
        # refused connections are not retried at all); POST is retried because
        # a completion request has no side effects. The pool and bulkhead fit
        # an async worker carrying hundreds of generations at once.
        "openai": {
            "base_url": openai_base_url(),
            "description": "OpenAI-compatible chat completions (aigen)",
            "connect_timeout": 3.0, "read_timeout": 60.0, "deadline": 120.0,
            # Streams: a first token within 20 s, no silence over 15 s, ten minutes at most.
            "first_token_timeout": 20.0, "stream_idle_timeout": 15.0, "stream_max_seconds": 600.0,
            "retry_total": 2, "retry_backoff_factor": 0.5, "retry_backoff_max": 4.0,
            "retry_jitter": 0.5, "retry_statuses": [429, 500, 502, 503, 504],
            "retry_methods": ["GET", "POST"], "retry_after_max": 8.0,
            "breaker_fail_max": 5, "breaker_reset_timeout": 30.0,
            "pool_size": 500, "bulkhead_max": 1000, "bulkhead_wait": 1.0,
            # The model the front door (/v1/chat/completions) routes here.
            "served_models": [aigen_settings.MODEL],
        },
    }
    created = []
    existing = set(Upstream.objects.using(using).filter(name__in=seeds).values_list("name", flat=True))
    for name, fields in seeds.items():
        if name in existing:
            continue
        upstream = Upstream(name=name, **fields)
        upstream.full_clean(validate_unique=False)  # the seed itself must be valid
        _, was_created = Upstream.objects.using(using).get_or_create(name=name, defaults=fields)
        if was_created:
            created.append(name)
    if created:
        reset_clients()
    return created


def upstreams_seed_after_migrate(*, using: str = "default", apps: Any = None, **kwargs: Any) -> None:
    """post_migrate receiver: seed the built-in upstreams, so a deployment that
    runs `migrate` alone never answers 502 "no upstream named 'openai'".
    Skipped while the upstream table is behind the model (a partial migrate),
    and with RESILIENCE["SEED_ON_MIGRATE"] off (the test suite's own tables)."""
    from django.apps import apps as global_apps

    from resilience.conf import resilience_settings

    if not resilience_settings.SEED_ON_MIGRATE:
        return
    apps = apps or global_apps
    try:
        migrated = apps.get_model("resilience", "Upstream")
    except LookupError:
        return
    current = {f.column for f in Upstream._meta.concrete_fields}
    if {f.column for f in migrated._meta.concrete_fields} != current:
        return
    upstreams_seed(using=using)


def upstream_openai_sync(*, reason: str = "OPENAI_BASE_URL") -> str | None:
    """Point the stored `openai` upstream at OPENAI_BASE_URL (validated, kept in
    the policy's history); returns the old base URL, or None when they agree."""
    from aigen.conf import aigen_settings, openai_base_url

    upstream = _get(aigen_settings.UPSTREAM)
    wanted = openai_base_url()
    if upstream.base_url.rstrip("/") == wanted.rstrip("/"):
        return None
    old = upstream.base_url
    upstream.base_url = wanted
    upstream.full_clean()
    upstream._change_reason = f"base URL set from {reason}"
    upstream.save()
    return old
