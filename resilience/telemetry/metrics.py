"""Prometheus metrics and the `/metrics` view.

Two kinds of metric, each counted where it is exact:

- Events, counted in the process where they happen: upstream calls by outcome,
  their latency and retries (the `call_completed` signal), breaker transitions
  (`breaker_state_changed`), the service's own request latency by view
  (resilience.middleware.RequestTimingMiddleware calls `request_observe`), and
  AI generations and tokens (aigen.metrics; no scrape reads the database).
- State, read at scrape time by collectors: breaker state (shared breaker
  storage, so every worker sees the same) and the cache backend's counters
  (already summed across workers through Redis).

Several worker processes: with `PROMETHEUS_MULTIPROC_DIR` set in the
environment of every worker (prometheus_client reads it at import) and the
same directory in `RESILIENCE["METRICS_MULTIPROC_DIR"]`, each worker writes
its event metrics to files there and a scrape sums them all
(`prometheus_client.multiprocess`). Empty the directory when the server
starts. Without it, the process's default registry is exported.

On failure: a receiver never raises into the upstream call that sent the
signal (the error is logged); a collector whose source is down (database)
is left out of that scrape, and the rest is still exported.
"""
from __future__ import annotations

import functools
import hmac
import ipaddress
import logging
from collections.abc import Iterator
from typing import Any

from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from resilience.conf import resilience_settings
from resilience.signals import breaker_state_changed, call_completed

logger = logging.getLogger(__name__)

#: Breaker state as a number: `resilience_breaker_state`.
BREAKER_STATE_VALUES = {"closed": 0, "half-open": 1, "open": 2}
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
HTTP_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"})

UPSTREAM_CALLS = Counter(
    "resilience_upstream_calls", "Logical upstream calls, by outcome (one per call-log row).",
    ["upstream", "outcome"])
UPSTREAM_LATENCY = Histogram(
    "resilience_upstream_call_duration_seconds",
    "Duration of upstream calls that reached the upstream (retries included; cache hits and "
    "breaker refusals are not observed).", ["upstream"], buckets=LATENCY_BUCKETS)
UPSTREAM_RETRIES = Counter(
    "resilience_upstream_retries", "Attempts beyond the first of each upstream call.", ["upstream"])
ENDPOINT_CALLS = Counter(
    "resilience_endpoint_calls", "Logical upstream calls by the endpoint of their last attempt, for "
    "upstreams with endpoints (names set by operators, never by callers).",
    ["upstream", "endpoint", "outcome"])
STREAM_EVENTS = Counter(
    "resilience_stream_events", "Supervised stream events by the endpoint they happened on: cut, "
    "timeout_first_token, timeout_idle, timeout_max, error_event, failover, continuation, splice, "
    "restart, skipped (malformed events), no_done (finished without [DONE]).",
    ["upstream", "endpoint", "event"])
BREAKER_TRANSITIONS = Counter(
    "resilience_breaker_transitions",
    "Circuit breaker state changes (counted by the process that made them).",
    ["upstream", "from_state", "to_state"])
HTTP_REQUEST_LATENCY = Histogram(
    "http_request_duration_seconds",
    "The service's own request latency until the response is ready, by view.",
    ["view", "method", "status"], buckets=LATENCY_BUCKETS)


# -- events --------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4096)
def _children(upstream: str, outcome: str) -> tuple[Any, Any, Any]:
    # labels() takes a lock and builds a key on every call; the children are stable.
    return (UPSTREAM_CALLS.labels(upstream, outcome), UPSTREAM_LATENCY.labels(upstream),
            UPSTREAM_RETRIES.labels(upstream))


@functools.lru_cache(maxsize=4096)
def _endpoint_child(upstream: str, endpoint: str, outcome: str) -> Any:
    return ENDPOINT_CALLS.labels(upstream, endpoint, outcome)


def _on_call_completed(sender: Any, *, call: Any, **kwargs: Any) -> None:
    upstream, attempts = call.upstream, call.attempts
    try:
        calls, latency, retries = _children(upstream, str(call.outcome))
        calls.inc()
        if attempts > 0:
            latency.observe(call.latency_ms / 1000)
        if attempts > 1:
            retries.inc(attempts - 1)
        endpoint = getattr(call, "endpoint", "")
        if endpoint:
            _endpoint_child(upstream, endpoint, str(call.outcome)).inc()
        for event, count in call.result.stream:  # streamed attempts only: rare next to calls
            STREAM_EVENTS.labels(upstream, endpoint, event).inc(count)
    except Exception:  # metrics must never fail a call
        logger.exception("metrics: could not count a call to %s", upstream)


def _on_breaker_changed(sender: Any, *, upstream: str, old: str, new: str, **kwargs: Any) -> None:
    try:
        BREAKER_TRANSITIONS.labels(upstream, old or "unknown", new).inc()
    except Exception:
        logger.exception("metrics: could not count a breaker change of %s", upstream)


def metrics_install() -> None:
    """Connect the signal receivers (idempotent; done on import)."""
    call_completed.connect(_on_call_completed, dispatch_uid="resilience.metrics.call_completed")
    breaker_state_changed.connect(_on_breaker_changed, dispatch_uid="resilience.metrics.breaker_changed")


metrics_install()


def request_observe(*, view: str, method: str, status: int, seconds: float) -> None:
    """Count one request the service answered (by the timing middleware)."""
    method = method if method in HTTP_METHODS else "other"
    HTTP_REQUEST_LATENCY.labels(view, method, str(status)).observe(seconds)


# -- state, at scrape time ---------------------------------------------------------------------
class BreakerCollector:
    """`resilience_breaker_state` (0 closed, 1 half-open, 2 open) and
    `resilience_breaker_failures` per upstream with an enabled breaker, and
    `resilience_endpoint_breaker_state` per enabled endpoint of such an
    upstream, read from the shared breaker storage: the same answer from
    every worker. One query (upstreams joined to their endpoints)."""

    def collect(self) -> Iterator[Metric]:
        from resilience.client.breaker import SharedBreaker
        from resilience.client.endpoints import breaker_name
        from resilience.models import Upstream

        state = GaugeMetricFamily("resilience_breaker_state", "Circuit breaker state: 0 closed, "
                                  "1 half-open, 2 open.", labels=["upstream"])
        failures = GaugeMetricFamily("resilience_breaker_failures",
                                     "Consecutive failures counted by the breaker.", labels=["upstream"])
        endpoints = GaugeMetricFamily("resilience_endpoint_breaker_state", "Endpoint circuit breaker state: "
                                      "0 closed, 1 half-open, 2 open.", labels=["upstream", "endpoint"])
        try:
            rows = list(Upstream.objects.filter(breaker_enabled=True).order_by("name").values_list(
                "name", "breaker_fail_max", "breaker_reset_timeout", "endpoints__name", "endpoints__enabled"))
        except DatabaseError:
            logger.warning("metrics: breaker states left out (database unavailable)")
            return
        seen: set[str] = set()
        for name, fail_max, reset_timeout, endpoint, enabled in rows:
            if name not in seen:
                seen.add(name)
                status = SharedBreaker.status_of(name, fail_max=fail_max, reset_timeout=reset_timeout)
                state.add_metric([name], BREAKER_STATE_VALUES.get(status["state"], 0))
                failures.add_metric([name], status["failures"] or 0)
            if endpoint and enabled:
                status = SharedBreaker.status_of(breaker_name(name, endpoint), fail_max=fail_max,
                                                 reset_timeout=reset_timeout)
                endpoints.add_metric([name, endpoint], BREAKER_STATE_VALUES.get(status["state"], 0))
        yield state
        yield failures
        yield endpoints


class CacheCollector:
    """The cache backend's counters (`cache_stats()`: summed across workers
    while Redis is up, this process's own while it falls back to memory)."""

    def collect(self) -> Iterator[Metric]:
        from resilience.cache.ops import cache_stats

        stats = cache_stats()
        for field, text in (("hits", "Cache hits."), ("misses", "Cache misses."), ("sets", "Cache writes."),
                            ("deletes", "Cache deletions."), ("errors", "Cache backend errors."),
                            ("fallbacks", "Falls back from Redis to local memory.")):
            yield CounterMetricFamily(f"resilience_cache_{field}", text, value=stats.get(field, 0))
        yield GaugeMetricFamily("resilience_cache_fallback",
                                "1 while Redis is configured but local memory serves.",
                                value=1 if stats.get("fallback") else 0)
        backend = GaugeMetricFamily("resilience_cache_backend", "The store serving now (value 1).",
                                    labels=["backend", "scope"])
        backend.add_metric([str(stats.get("backend", "")), str(stats.get("scope", ""))], 1)
        yield backend


def scrape_registry() -> CollectorRegistry:
    """A registry for one scrape: every worker's event metrics (multiprocess
    mode) or this process's, plus the state collectors."""
    registry = CollectorRegistry()
    path = resilience_settings.METRICS_MULTIPROC_DIR
    if path:
        multiprocess.MultiProcessCollector(registry, path=str(path))
    else:
        registry.register(REGISTRY)
    for collector in (BreakerCollector(), CacheCollector()):
        registry.register(collector)
    return registry


# -- the view ----------------------------------------------------------------------------------
def _error(code: str, message: str, status: int) -> JsonResponse:
    return JsonResponse({"success": False, "error": {"code": code, "message": message}}, status=status)


def _loopback(request: HttpRequest) -> bool:
    """A direct client on this host. A request relayed by a proxy (it names
    the original client) is not, even though it arrives from 127.0.0.1."""
    if any(request.META.get(h) for h in ("HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", "HTTP_X_REAL_IP")):
        return False
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or bool(mapped and mapped.is_loopback)


def metrics_denied(request: HttpRequest) -> JsonResponse | None:
    """Why this request may not read /metrics (None: it may).

    With `METRICS_TOKEN` set, `Authorization: Bearer <token>` is required from
    everyone; without it, only loopback clients get in.
    """
    token = str(resilience_settings.METRICS_TOKEN or "")
    if not token:
        if _loopback(request):
            return None
        return _error("permission_denied", "/metrics is open to loopback clients only; set METRICS_TOKEN "
                      "to scrape it from elsewhere.", 403)
    scheme, _, given = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
        return None
    response = _error("not_authenticated", "/metrics needs Authorization: Bearer <METRICS_TOKEN>.", 401)
    response["WWW-Authenticate"] = 'Bearer realm="metrics"'
    return response


@never_cache
@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus exposition (text format, or OpenMetrics when asked for)."""
    denied = metrics_denied(request)
    if denied is not None:
        return denied
    encoder, content_type = choose_encoder(request.META.get("HTTP_ACCEPT", ""))
    return HttpResponse(encoder(scrape_registry()), content_type=content_type)
