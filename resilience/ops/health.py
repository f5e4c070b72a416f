"""Liveness and readiness, on django-health-check's checks.

`/healthz`: the process answers. `/readyz`: the checks below (their details
for staff or `Bearer <METRICS_TOKEN>` only; anyone else reads the status), each a
django-health-check `HealthCheck` (the library's for the database, the
cache round trip and Redis; ours for what only this project knows), run in
the request's own thread:

| check | from | failing means |
|---|---|---|
| `database` | `health_check.checks.Database` (SELECT 1) | 503 `unavailable`: nothing works without it |
| `cache` | `health_check.checks.Cache` (set + get) and `CacheFallback` | `degraded`: local memory serves |
| `redis` | `health_check.contrib.redis.Redis` (PING), when `REDIS_URL` is set | `degraded` |
| `upstreams` | `UpstreamProbes`: each probed upstream's last scheduled probe | `degraded`, names them |
| `workers` | `JobWorkers`: a due job waited over `JOBS_STALL_SECONDS` | `degraded`: no worker takes jobs |

An unhealthy upstream, a cache in fallback or a stalled queue leave the
service answering: `/readyz` says `"status": "degraded"` with 200 (a load
balancer keeps sending traffic); only the database makes it 503. With the
database down, `upstreams` and `workers` (which read it) are not run, so a
blackholed database costs `/readyz` one connect timeout, not three.

Why not the library's own view: it answers 500 for any failing check (no
"degraded"), and runs sync checks in executor threads whose database
connections nothing closes.
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
import time
from typing import Any

from asgiref.sync import async_to_sync, iscoroutinefunction
from django.conf import settings
from django.core.cache import cache
from django.db import DatabaseError, connection
from django.db.models import Q
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from health_check.base import HealthCheck
from health_check.checks import Cache, Database
from health_check.exceptions import HealthCheckException, ServiceUnavailable, ServiceWarning

from resilience.conf import resilience_settings
from resilience.jobs.models import Job
from resilience.jobs.selectors import upstream_health
from resilience.telemetry.metrics import metrics_token_given

logger = logging.getLogger(__name__)

#: The database connection `/readyz` checks (a test points it at a broken one).
DATABASE_ALIAS = "default"


# -- our checks ----------------------------------------------------------------------------------
@dataclasses.dataclass
class CacheFallback(HealthCheck):
    """Warns while Redis is configured but local memory serves (per process)."""

    def run(self) -> None:
        if getattr(cache, "in_fallback", False):
            raise ServiceWarning("Redis is configured but unreachable: this worker serves from local memory")


@dataclasses.dataclass
class UpstreamProbes(HealthCheck):
    """Warns when an upstream's last scheduled health probe failed; keeps what
    it read in `health` (each probed upstream's last probe) for the report."""

    health: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    def run(self) -> None:
        self.health = health = upstream_health()
        if not health["ok"]:
            raise ServiceWarning(f"unhealthy upstreams: {', '.join(health['unhealthy'])}")


@dataclasses.dataclass
class JobWorkers(HealthCheck):
    """Warns when a due job has waited longer than `JOBS_STALL_SECONDS`: no
    worker (`manage.py jobs_worker`) is taking jobs."""

    def run(self) -> None:
        stall = float(resilience_settings.JOBS_STALL_SECONDS)
        if stall <= 0:
            return
        cutoff = timezone.now() - datetime.timedelta(seconds=stall)
        due = (Job.objects.filter(status=Job.Status.QUEUED, created_at__lt=cutoff)
               .filter(Q(run_after__isnull=True) | Q(run_after__lt=cutoff)))
        oldest = due.order_by("created_at").values_list("created_at", flat=True).first()
        if oldest is not None:
            waited = (timezone.now() - oldest).total_seconds()
            raise ServiceWarning(f"a due job has waited {waited:.0f} s: is `manage.py jobs_worker` running?")


def redis_check() -> HealthCheck | None:
    if not getattr(settings, "REDIS_URL", ""):
        return None
    from health_check.contrib.redis import Redis
    from redis.asyncio import Redis as AsyncRedis

    url = settings.REDIS_URL
    return Redis(client_factory=lambda: AsyncRedis.from_url(url, socket_connect_timeout=1, socket_timeout=1))


#: Check groups that read the database: not run once the database check failed.
NEEDS_DATABASE = frozenset({"upstreams", "workers"})


def ready_checks() -> dict[str, list[HealthCheck]]:
    """The readiness checks by name; `database` is the one that makes /readyz 503."""
    checks: dict[str, list[HealthCheck]] = {
        "database": [Database(alias=DATABASE_ALIAS)],
        "cache": [Cache(key_prefix="misc:readyz"), CacheFallback()],
        "upstreams": [UpstreamProbes()],
        "workers": [JobWorkers()],
    }
    redis = redis_check()
    if redis is not None:
        checks["redis"] = [redis]
    return checks


# -- running them ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CheckOutcome:
    error: HealthCheckException | None
    ms: float

    @property
    def warning(self) -> bool:
        return isinstance(self.error, ServiceWarning)


def check_run(check: HealthCheck) -> CheckOutcome:
    """Run one check in this thread (async ones through async_to_sync). An
    unexpected exception is logged and reported as an unknown error."""
    started = time.perf_counter()
    try:
        if iscoroutinefunction(check.run):
            async_to_sync(check.run)()
        else:
            check.run()
    except HealthCheckException as err:
        error: HealthCheckException | None = err
    except Exception:
        logger.exception("health: check %r raised", check)
        error = ServiceUnavailable("unknown error")
    else:
        error = None
    return CheckOutcome(error, round((time.perf_counter() - started) * 1000, 2))


def checks_report(checks: dict[str, list[HealthCheck]]) -> tuple[str, dict[str, Any]]:
    """(`ready` | `degraded` | `unavailable`, per-check details)."""
    report: dict[str, Any] = {}
    status = "ready"
    for name, group in checks.items():
        if status == "unavailable" and name in NEEDS_DATABASE:
            # Each would wait out the connect timeout again (a blackholed database made
            # /readyz take three of them: tests/acceptance/test_faults_postgres.py).
            report[name] = {"ok": False, "error": "not checked: the database is unavailable",
                            "latency_ms": 0.0}
            continue
        outcomes = [check_run(check) for check in group]
        errors = [str(o.error) for o in outcomes if o.error is not None]
        report[name] = {"ok": not errors, "error": "; ".join(errors) or None,
                        "latency_ms": round(sum(o.ms for o in outcomes), 2)}
        if errors and name == "database":
            status = "unavailable"
        elif errors and status == "ready":
            status = "degraded"
    return status, report


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


def sees_details(request: HttpRequest) -> bool:
    """Staff (a session) or the scraper (`Bearer <METRICS_TOKEN>`) read what
    /readyz found; anyone else only whether the service is ready."""
    if metrics_token_given(request):
        return True
    try:
        user = getattr(request, "user", None)
        return bool(user is not None and user.is_active and user.is_staff)
    except DatabaseError:  # the session's user cannot be read while the database is down
        return False


@never_cache
@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    checks = ready_checks()
    status, report = checks_report(checks)
    code = 503 if status == "unavailable" else 200
    if not sees_details(request):
        # Upstream names, probe errors, the database vendor and the cache state
        # tell an attacker what is behind the door: none of it for anonymous callers.
        return JsonResponse({"status": status}, status=code)
    report["database"]["vendor"] = connection.vendor
    report["cache"].update({k: v for k, v in cache_status().items() if k != "ok"})
    for check in checks["upstreams"]:
        if isinstance(check, UpstreamProbes) and check.health:
            report["upstreams"].update(unhealthy=check.health["unhealthy"], probed=check.health["probed"])
    return JsonResponse({"status": status, "checks": report}, status=code)
