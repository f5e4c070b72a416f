"""Write-side operations on upstreams, shared by the admin, the API and the
management commands (they stay thin and call these)."""
from __future__ import annotations

import logging
import time
from typing import Any

from django.apps import apps as global_apps
from django.core.cache import cache

from aigen.conf import aigen_settings, openai_base_url
from resilience import exceptions as errors
from resilience.client import reset_clients, upstream_client
from resilience.client.breaker import SharedBreaker
from resilience.client.endpoints import endpoint_states
from resilience.conf import credential_refusal, resilience_settings
from resilience.models import Endpoint, Upstream
from resilience.telemetry.selectors import breaker_status

logger = logging.getLogger(__name__)


def _get(name: str) -> Upstream:
    try:
        return Upstream.objects.get(name=name)
    except Upstream.DoesNotExist:
        raise errors.UnknownUpstream(f"no upstream named {name!r}", upstream=name) from None


def breaker_reset(*, name: str, by: str = "operator") -> dict[str, Any]:
    """Close every breaker of upstream `name` (each endpoint's) now; returns
    the upstream's breaker status as it then is."""
    upstream = _get(name)
    if upstream.breaker_enabled:
        for breaker in upstream_client(name).breakers().values():
            breaker.close_by(by=by)
    return breaker_status(upstream)


def breakers_state(*, name: str) -> dict[str, Any]:
    """Upstream `name`'s breakers as they are: its own view and every endpoint's."""
    upstream = _get(name)
    return {"upstream": name, "breaker": breaker_status(upstream), "endpoints": endpoint_states(upstream)}


def _endpoint_breaker(upstream: Upstream, endpoint: str | None) -> SharedBreaker:
    """The live breaker of one endpoint (None: the single-URL upstream's own)."""
    if not upstream.breaker_enabled:
        raise errors.BreakerControlRefused(f"upstream {upstream.name!r} has its breaker disabled",
                                           upstream=upstream.name)
    rows = {row.name: row for row in upstream.endpoints.all()}
    if endpoint is None or endpoint == "":
        if rows:
            raise errors.InvalidInput(f"upstream {upstream.name!r} has endpoints: name one",
                                      field="endpoint")
        endpoint = ""
    elif endpoint not in rows:
        raise errors.UnknownEndpoint(f"upstream {upstream.name!r} has no endpoint {endpoint!r}",
                                     upstream=upstream.name, endpoint=endpoint)
    elif not rows[endpoint].enabled:
        raise errors.BreakerControlRefused(f"endpoint {endpoint!r} is disabled (it gets no calls)",
                                           upstream=upstream.name, endpoint=endpoint)
    return upstream_client(upstream.name).breakers()[endpoint]


def breaker_endpoint_reset(*, name: str, endpoint: str | None, by: str, reason: str = "") -> dict[str, Any]:
    """Close one endpoint's breaker now (recorded with `by`); returns every
    endpoint's state (`breakers_state`)."""
    upstream = _get(name)
    _endpoint_breaker(upstream, endpoint).close_by(by=by, reason=reason)
    logger.info("breaker %s/%s reset by %s", name, endpoint or "", by)
    return breakers_state(name=name)


def breaker_reset_all(*, name: str, by: str, reason: str = "") -> dict[str, Any]:
    """Close every endpoint's breaker of upstream `name` (recorded with `by`);
    returns every endpoint's state."""
    upstream = _get(name)
    if upstream.breaker_enabled:
        for breaker in upstream_client(name).breakers().values():
            breaker.close_by(by=by, reason=reason)
    return breakers_state(name=name)


def breaker_force_open(*, name: str, endpoint: str | None, seconds: float, by: str,
                       reason: str = "") -> dict[str, Any]:
    """Open one endpoint's breaker for `seconds` (maintenance, drills) in
    every worker, recorded with `by`; afterwards it half-opens and a probe
    decides. Returns every endpoint's state."""
    if not 1 <= seconds <= FORCE_OPEN_MAX:
        raise errors.InvalidInput(f"seconds must be between 1 and {FORCE_OPEN_MAX}", field="seconds")
    upstream = _get(name)
    if not _endpoint_breaker(upstream, endpoint).force_open(seconds=seconds, by=by, reason=reason):
        raise errors.BreakerControlRefused("another worker is changing this breaker; try again",
                                           upstream=name)
    return breakers_state(name=name)


#: Longest forced opening (seconds): a day; longer maintenance is disabling the endpoint.
FORCE_OPEN_MAX = 86400


def upstream_cache_clear(*, name: str) -> int:
    """Remove upstream `name`'s cached responses; returns how many."""
    _get(name)
    upstream_client(name).near.clear()
    return cache.delete_pattern(f"http:{name}:*")


#: Characters of a failed probe's answer shown to staff (the API, the admin).
PROBE_DETAIL_CHARS = 200


def upstream_probe(*, name: str) -> dict[str, Any]:
    """One real call to the upstream's health path (bypassing the cache); a
    failed answer's `detail` is the start of its body, credentials masked."""
    upstream = _get(name)
    started = time.perf_counter()
    try:
        response = upstream_client(name).get(upstream.health_path or "/", cache=False,
                                             raise_for_status=False)
    except errors.UpstreamError as err:
        return {"ok": False, "status": None, "error": err.as_dict(),
                "latency_ms": round((time.perf_counter() - started) * 1000, 2)}
    failed = response.status_code >= 400
    return {"ok": not failed, "status": response.status_code, "error": None,
            # Why it failed in the upstream's words (its credentials masked by the client).
            "detail": response.text[:PROBE_DETAIL_CHARS] if failed else "",
            "attempts": response.attempts,
            "latency_ms": round((time.perf_counter() - started) * 1000, 2)}


def credentials_refused() -> list[str]:
    """One line per stored policy naming a variable it may not name (a row
    from before the rule, or the declarations changed since): such a row
    sends nothing (`CredentialRefused`). For the server's start, so an
    upgrade says what to rename or declare."""
    named = [(f"upstream {name!r}", variable) for name, variable in
             Upstream.objects.exclude(auth_env_var="").values_list("name", "auth_env_var")]
    named += [(f"endpoint {upstream}/{name}", variable) for upstream, name, variable in
              Endpoint.objects.exclude(auth_env_var="").values_list("upstream__name", "name", "auth_env_var")]
    return [f"{what}: {problem}" for what, variable in named if (problem := credential_refusal(variable))]


def upstreams_seed(*, using: str = "default") -> list[str]:
    """Create the built-in upstreams that do not exist yet; returns the created names.

    Existing rows are left alone: the admin owns them once they exist (the
    stored `openai` base URL wins over a later OPENAI_BASE_URL; see
    `aigen.conf.base_url_disagreement` and `upstream_openai_sync`).
    Runs after every `migrate` too (`upstreams_seed_after_migrate`).
    """
    seeds = {
        # The OpenAI-compatible provider (aigen): 60 s reads (a long answer
        # streams for a while), 2 retries on 429/5xx/timeouts waiting 0.5 s
        # then 1 s plus up to 0.5 s of jitter (names that do not resolve and
        # refused connections are not retried at all); POST is retried because
        # a completion request has no side effects. An open endpoint is probed
        # after 1 s, then 2, 4 and every 8 s: back in use within seconds. The pool and bulkhead fit
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
            "breaker_fail_max": 5, "breaker_reset_timeout": 8.0, "breaker_probe_interval": 1.0,
            "pool_size": 500, "bulkhead_max": 1000, "bulkhead_wait": 1.0,
            # The model the front door (/v1/chat/completions) routes here.
            "served_models": [aigen_settings.MODEL],
            # The provider's key, bound to this origin: the SDK sends none of its own.
            "auth_kind": "bearer", "auth_env_var": "OPENAI_API_KEY",
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
