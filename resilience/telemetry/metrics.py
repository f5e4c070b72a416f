"""Prometheus metrics and the `/metrics` view.

Two kinds of metric, each counted where it is exact:

- Events, counted in the process where they happen: upstream calls by outcome,
  their latency and retries (the `call_completed` signal), breaker transitions
  (`breaker_state_changed`), the service's own request latency by view
  (resilience.ops.middleware.RequestTimingMiddleware calls `request_observe`), and
  AI generations and tokens (aigen.generation.metrics; no scrape reads the database).
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
from dataclasses import dataclass
from typing import Any

from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from resilience.cache import default_cache
from resilience.cache.breakers import breaker_name, breaker_status_of
from resilience.cache.ops import cache_stats
from resilience.conf import resilience_settings
from resilience.signals import breaker_state_changed, call_completed
from resilience.telemetry.accounts import AccountCollector

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
LOCK_EVENTS = Counter(
    "resilience_lock_events", "Distributed lock events (resilience.locks): acquired, contended, "
    "not_acquired, expired, fallbacks. Lock names are never a label (they may carry ids).", ["event"])
LOCK_WAIT_SECONDS = Counter(
    "resilience_lock_wait_seconds", "Seconds spent waiting to acquire distributed locks, summed.")
HTTP_REQUEST_LATENCY = Histogram(
    "http_request_duration_seconds",
    "The service's own request latency until the response is ready, by view.",
    ["view", "method", "status"], buckets=LATENCY_BUCKETS)
BODIES_REFUSED = Counter(
    "resilience_request_bodies_refused", "Requests answered 413 at the door: a body over MAX_REQUEST_BYTES, "
    "declared or counted as it arrived (never read past the limit).")
SEND_TIMEOUTS = Counter(
    "resilience_send_timeouts", "Responses closed because the client read nothing for SEND_TIMEOUT "
    "seconds (a parked stream; its upstream connection and bulkhead slot were released).")

# Admission (resilience.client.admission): labelled by priority only (high, normal, low).
ADMISSION_WAITING = Gauge(
    "resilience_admission_waiting", "Calls waiting for endpoint room (rpm/tpm limits) now, by priority.",
    ["priority"], multiprocess_mode="livesum")
ADMISSION_WAIT_SECONDS = Histogram(
    "resilience_admission_wait_seconds", "Seconds calls to limited endpoints waited for room, by priority "
    "(0 for a call admitted at once).", ["priority"],
    buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0))
ADMISSION_REFUSED = Counter(
    "resilience_admission_refused", "Calls that found no endpoint room before their deadline (503), by "
    "priority.", ["priority"])


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


def body_refused_count() -> None:
    """Count one request refused at the door (project.door)."""
    BODIES_REFUSED.inc()


def send_timeout_count() -> None:
    """Count one response closed by the send timeout (project.asgi_handler)."""
    SEND_TIMEOUTS.inc()


# -- state, at scrape time ---------------------------------------------------------------------
class BreakerCollector:
    """`resilience_breaker_state` (0 closed, 1 half-open, 2 open) and
    `resilience_breaker_failures` per upstream with an enabled breaker, and
    `resilience_endpoint_breaker_state` per enabled endpoint of such an
    upstream, read from the shared breaker storage: the same answer from
    every worker. One query (upstreams joined to their endpoints)."""

    def collect(self) -> Iterator[Metric]:
        # Imported at scrape time, not for a circle: this module loads before the
        # app registry is ready (project.door, project.asgi_handler import it) and
        # the models cannot load before it.
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
                status = breaker_status_of(name, fail_max=fail_max, reset_timeout=reset_timeout)
                state.add_metric([name], BREAKER_STATE_VALUES.get(status["state"], 0))
                failures.add_metric([name], status["failures"] or 0)
            if endpoint and enabled:
                status = breaker_status_of(breaker_name(name, endpoint), fail_max=fail_max,
                                                 reset_timeout=reset_timeout)
                endpoints.add_metric([name, endpoint], BREAKER_STATE_VALUES.get(status["state"], 0))
        yield state
        yield failures
        yield endpoints


class CacheCollector:
    """The cache backend's counters (`cache_stats()`: summed across workers
    while Redis is up, this process's own while it falls back to memory)."""

    def collect(self) -> Iterator[Metric]:
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


@dataclass(frozen=True, slots=True)
class _OperationsState:
    """What one scrape read of the jobs, probes and alerts (by priority, by upstream, by rule)."""

    waiting: dict[str, dict[str, Any]]
    busy: dict[str, int]
    dead: int
    probes: dict[str, list[tuple[bool, Any]]]
    firing: list[dict[str, Any]]


class OperationsCollector:
    """The jobs queues, probes and alerts, read from the database at scrape
    time (the same answer from every worker; a few grouped queries whatever
    the traffic):

    - `resilience_jobs_queue_depth{queue}`: jobs waiting and due;
      `resilience_jobs_queue_oldest_age_seconds{queue}`: how long the oldest
      of them has been due; `resilience_jobs_running{queue}`;
    - `resilience_jobs_dead_letters`: failed jobs kept (until retention);
      `resilience_jobs_scheduler_last_tick_timestamp_seconds`: the last
      schedule tick of any worker (from the shared cache: absent without Redis);
    - `resilience_probe_ok{upstream}` (1 healthy, 0 not),
      `resilience_probe_timestamp_seconds{upstream}` and
      `resilience_probe_consecutive_failures{upstream}`: the last probes of
      each probed upstream;
    - `resilience_alerts_firing{rule_id, metric, severity}`: firing alerts per
      rule. Labels are bounded by configuration, never by callers: queues are
      the three priorities, upstreams and rules are rows operators create, and
      a rule is labelled by its id (a rename does not start a new series) with
      its metric kind and severity (for grouping without a join).
    """

    def collect(self) -> Iterator[Metric]:
        from django.utils import timezone

        now = timezone.now()
        try:
            state = self._read(now)
        except DatabaseError:
            logger.warning("metrics: jobs, probes and alerts left out (database unavailable)")
            return
        yield from self._jobs(state, now)
        yield from self._probes(state.probes)
        yield self._alerts(state.firing)

    @staticmethod
    def _read(now: Any) -> _OperationsState:
        """The jobs, probes and alerts as the database has them now (a few grouped queries)."""
        from django.db.models import Count, Min, Q
        from django.db.models.functions import Coalesce

        # At scrape time, not for a circle: this module loads before the app
        # registry is ready (project.door imports it), and models need it.
        from resilience.models import Alert, Job, ProbeResult, Upstream

        due = Q(run_after__isnull=True) | Q(run_after__lte=now)
        kept = [Job.Status.QUEUED, Job.Status.RUNNING, Job.Status.FAILED]
        rows = list(Job.objects.filter(status__in=kept).values("status", "priority").annotate(
            count=Count("id", filter=due | ~Q(status=Job.Status.QUEUED)),
            oldest=Min(Coalesce("run_after", "created_at"), filter=due)))
        probed = list(Upstream.objects.filter(probe_interval__gt=0).exclude(health_path="")
                      .values_list("name", flat=True))
        return _OperationsState(
            waiting={r["priority"]: r for r in rows if r["status"] == Job.Status.QUEUED},
            busy={r["priority"]: r["count"] for r in rows if r["status"] == Job.Status.RUNNING},
            dead=sum(r["count"] for r in rows if r["status"] == Job.Status.FAILED),
            probes={name: list(ProbeResult.objects.filter(upstream=name)
                               .values_list("ok", "created_at")[:20]) for name in probed},
            firing=list(Alert.objects.filter(state=Alert.State.FIRING).values(
                "rule_id", "rule__metric", "rule__severity").annotate(count=Count("id"))))

    @staticmethod
    def _jobs(state: _OperationsState, now: Any) -> Iterator[Metric]:
        queues = {"high": "high", "normal": "default", "low": "low"}
        depth = GaugeMetricFamily("resilience_jobs_queue_depth", "Jobs waiting to run now, per queue.",
                                  labels=["queue"])
        age = GaugeMetricFamily("resilience_jobs_queue_oldest_age_seconds",
                                "Seconds the oldest waiting job has been due, per queue.", labels=["queue"])
        running = GaugeMetricFamily("resilience_jobs_running", "Jobs running, per queue.", labels=["queue"])
        for priority, queue in queues.items():
            row = state.waiting.get(priority)
            depth.add_metric([queue], row["count"] if row else 0)
            oldest = row["oldest"] if row else None
            age.add_metric([queue], max(0.0, (now - oldest).total_seconds()) if oldest else 0.0)
            running.add_metric([queue], state.busy.get(priority, 0))
        yield depth
        yield age
        yield running
        yield GaugeMetricFamily("resilience_jobs_dead_letters", "Failed jobs kept (dead letters).",
                                value=state.dead)
        last_tick = default_cache().get("jobs:scheduler:last_tick")  # resilience.jobs.worker.LAST_TICK_KEY
        if last_tick is not None:
            yield GaugeMetricFamily("resilience_jobs_scheduler_last_tick_timestamp_seconds",
                                    "Unix time of the last schedule tick of any jobs worker (shared through "
                                    "Redis; absent without it).", value=last_tick)

    @staticmethod
    def _probes(probes: dict[str, list[tuple[bool, Any]]]) -> Iterator[Metric]:
        ok = GaugeMetricFamily("resilience_probe_ok", "The last health probe: 1 healthy, 0 unhealthy.",
                               labels=["upstream"])
        when = GaugeMetricFamily("resilience_probe_timestamp_seconds", "Unix time of the last health probe.",
                                 labels=["upstream"])
        streak = GaugeMetricFamily("resilience_probe_consecutive_failures",
                                   "Failed health probes in a row (of the last 20).", labels=["upstream"])
        for name, results in probes.items():
            if not results:
                continue
            ok.add_metric([name], 1 if results[0][0] else 0)
            when.add_metric([name], results[0][1].timestamp())
            failures = 0
            for healthy, _ in results:
                if healthy:
                    break
                failures += 1
            streak.add_metric([name], failures)
        yield ok
        yield when
        yield streak

    @staticmethod
    def _alerts(firing: list[dict[str, Any]]) -> Metric:
        alerts = GaugeMetricFamily("resilience_alerts_firing", "Firing alerts per rule (by id; see "
                                   "/api/resilience/alerts for names).",
                                   labels=["rule_id", "metric", "severity"])
        for row in firing:
            alerts.add_metric([str(row["rule_id"]), row["rule__metric"], row["rule__severity"]], row["count"])
        return alerts

def scrape_registry() -> CollectorRegistry:
    """A registry for one scrape: every worker's event metrics (multiprocess
    mode) or this process's, plus the state collectors."""
    registry = CollectorRegistry()
    path = resilience_settings.METRICS_MULTIPROC_DIR
    if path:
        multiprocess.MultiProcessCollector(registry, path=str(path))
    else:
        registry.register(REGISTRY)
    for collector in (BreakerCollector(), CacheCollector(), OperationsCollector(), AccountCollector()):
        registry.register(collector)
    return registry


# -- the view ----------------------------------------------------------------------------------
def _error(code: str, message: str, status: int) -> JsonResponse:
    return JsonResponse({"success": False, "error": {"code": code, "message": message}}, status=status)


@functools.lru_cache(maxsize=16)
def _networks(entries: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in entries if entry.strip())


def _allowed_address(request: HttpRequest) -> bool:
    """A direct client whose address is in `METRICS_ALLOWED_ADDRESSES`. A request
    relayed by a proxy (it names the original client) is not, whatever address
    it arrives from: the proxy's address says nothing of who asks."""
    if any(request.META.get(h) for h in ("HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", "HTTP_X_REAL_IP")):
        return False
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    address = getattr(address, "ipv4_mapped", None) or address
    allowed = _networks(tuple(resilience_settings.METRICS_ALLOWED_ADDRESSES))
    return any(address in network for network in allowed)


def metrics_token_given(request: HttpRequest) -> bool:
    """Whether the request carries `Authorization: Bearer <METRICS_TOKEN>` (and one is set)."""
    token = str(resilience_settings.METRICS_TOKEN or "")
    scheme, _, given = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
    return bool(token) and scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(),
                                                                              token.encode())


def metrics_denied(request: HttpRequest) -> JsonResponse | None:
    """Why this request may not read /metrics (None: it may).

    It needs `Authorization: Bearer <METRICS_TOKEN>`, or to come straight from
    an address in `METRICS_ALLOWED_ADDRESSES`; loopback is no exception (any
    local process, or a local proxy, would be let in). With neither
    configured, /metrics is closed.
    """
    if metrics_token_given(request) or _allowed_address(request):
        return None
    if not resilience_settings.METRICS_TOKEN:
        return _error("permission_denied", "/metrics needs METRICS_TOKEN (or METRICS_ALLOWED_ADDRESSES for "
                      "this address) set on the server.", 403)
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
