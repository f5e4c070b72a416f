"""The built-in demo: a flaky upstream served by the project itself, and the
traffic driver behind `manage.py demo` / `make demo`.

The flaky upstream (`/demo/flaky/<path>`) follows a fixed cycle on the wall
clock, the same in every process: about 20 s healthy (fast, one answer in ten
slow), 15 s failing with 503, 10 s recovering (slow answers that speed up).
Driven through `upstream("demo")` with a small breaker (3 failures, 5 s reset),
the dashboard shows the breaker trip, probe and close within a minute.

Its routes exist only with DEBUG on or `RESILIENCE["DEMO_ENABLED"]`; the view
also answers 404 otherwise, should it be routed some other way.

Failure behaviour of the driver: every call's error is counted, never raised;
Ctrl-C (KeyboardInterrupt) or the end of `duration` stops the threads, and the
buffered call logs are flushed before returning.
"""
from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler, get_internal_wsgi_application
from django.db import connection
from django.http import Http404, HttpRequest, JsonResponse
from django.urls import URLPattern, path
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from resilience import exceptions as errors
from resilience import upstream
from resilience.conf import resilience_settings
from resilience.models import Upstream
from resilience.telemetry.calllog import call_log_flush

logger = logging.getLogger(__name__)

DEMO_UPSTREAM = "demo"
DEFAULT_BASE_URL = "http://127.0.0.1:8000/demo/flaky"
# Fast timeouts and a small breaker, so trips and recoveries show within a minute.
DEMO_POLICY: dict[str, Any] = {
    "description": "Built-in flaky demo upstream (manage.py demo)",
    "connect_timeout": 0.5, "read_timeout": 1.0, "deadline": 2.5,
    "retry_total": 1, "retry_backoff_factor": 0.05, "retry_backoff_max": 0.2, "retry_jitter": 0.05,
    "retry_statuses": [502, 503, 504], "retry_after_max": 1.0,
    "breaker_fail_max": 3, "breaker_reset_timeout": 5.0,
    "cache_ttl": 2, "health_path": "/health",
    # A tour, like debugging: every call keeps its call-log row to browse.
    "log_sample_rate": 1.0,
}


class DemoError(Exception):
    """The demo cannot run as asked (its message says why and what to do)."""


def demo_enabled() -> bool:
    """The demo upstream may be served: DEBUG, or RESILIENCE["DEMO_ENABLED"]."""
    return bool(settings.DEBUG or resilience_settings.DEMO_ENABLED)


# -- the flaky upstream -------------------------------------------------------------
@dataclass(frozen=True)
class Phase:
    """How the flaky upstream answers at one moment."""

    name: str  # healthy | failing | recovering
    status: int
    delay: float  # seconds before answering
    remaining: float  # seconds until the next phase


class FlakyCycle:
    """The flaky upstream's deterministic cycle on the wall clock.

    `clock` and `sleep` are seams: tests move the clock and skip the waits.
    """

    clock = staticmethod(time.time)
    sleep = staticmethod(time.sleep)
    healthy = 20.0
    failing = 15.0
    recovering = 10.0
    fast = 0.02
    slow = 0.35

    @property
    def period(self) -> float:
        return self.healthy + self.failing + self.recovering

    def phase_at(self, now: float) -> Phase:
        t = now % self.period
        if t < self.healthy:
            # One tenth of every second is slow: about one answer in ten.
            delay = self.slow if int(now * 10) % 10 == 0 else self.fast
            return Phase("healthy", 200, delay, round(self.healthy - t, 3))
        t -= self.healthy
        if t < self.failing:
            return Phase("failing", 503, 0.0, round(self.failing - t, 3))
        t -= self.failing
        # Slow at first (1.5 x `slow`), easing back to `fast`.
        delay = self.fast + 1.5 * self.slow * (1 - t / self.recovering)
        return Phase("recovering", 200, round(delay, 3), round(self.recovering - t, 3))

    def current(self) -> Phase:
        return self.phase_at(type(self).clock())


@require_safe
@never_cache
def flaky(request: HttpRequest, path: str = "") -> JsonResponse:
    """The demo upstream: JSON {phase, path, next_phase_in}, 200 or 503."""
    if not demo_enabled():
        raise Http404("the demo is off")
    cycle = FlakyCycle()
    phase = cycle.current()
    if phase.delay:
        FlakyCycle.sleep(phase.delay)
    return JsonResponse({"phase": phase.name, "path": f"/{path}", "next_phase_in": phase.remaining},
                        status=phase.status)


DEMO_PATTERNS: list[URLPattern] = [
    path("demo/flaky/", flaky, name="demo-flaky"),
    path("demo/flaky/<path:path>", flaky, name="demo-flaky-path"),
]


def demo_urls() -> list[URLPattern]:
    """The flaky upstream's routes, or none when the demo is off (production)."""
    return list(DEMO_PATTERNS) if demo_enabled() else []


# -- setup -------------------------------------------------------------------------
def demo_upstream_validate(*, base_url: str) -> None:
    """Raise django's ValidationError when the `demo` upstream could not use
    `base_url`; stores nothing (the command checks before it changes the row)."""
    row = Upstream.objects.filter(name=DEMO_UPSTREAM).first()
    if row is None:
        row = Upstream(name=DEMO_UPSTREAM, **DEMO_POLICY)
    row.base_url = base_url
    row.full_clean(validate_unique=False)


def demo_upstream_ensure(*, base_url: str = DEFAULT_BASE_URL) -> tuple[Upstream, bool]:
    """Create the `demo` upstream at `base_url` with `DEMO_POLICY`, or point the
    existing one at `base_url` (its other fields are the admin's to change).

    Returns (row, created); raises django's ValidationError for a bad URL.
    """
    row = Upstream.objects.filter(name=DEMO_UPSTREAM).first()
    if row is None:
        row = Upstream(name=DEMO_UPSTREAM, base_url=base_url, **DEMO_POLICY)
        row.full_clean()
        row.save()
        return row, True
    if row.base_url != base_url.rstrip("/"):
        row.base_url = base_url
        row.full_clean()
        row.save()
    return row, False


def demo_staff_ensure(*, username: str = "admin", password: str = "admin") -> bool:
    """Create a superuser with a well-known password for a local demo; True
    when created. An existing user is left alone (its password unchanged).

    Raises DemoError unless DEBUG is on: a known password never reaches production.
    """
    if not settings.DEBUG:
        raise DemoError("a demo staff user with a known password is only created with DEBUG=true")
    users = get_user_model()
    if users.objects.filter(username=username).exists():
        return False
    users.objects.create_superuser(username=username, email="", password=password)
    return True


def demo_server_wait(*, base_url: str, timeout: float = 15.0) -> None:
    """Wait until something answers HTTP at `base_url`; raises DemoError after `timeout`.

    A readiness check of a server this command just started (or was pointed
    at), not an upstream call: it does not go through the resilient client.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            requests.get(base_url.rstrip("/") + "/", timeout=1.0)
            return
        except requests.RequestException as err:
            if time.monotonic() >= deadline:
                raise DemoError(f"nothing answers at {base_url} after {timeout:.0f} s "
                                f"({type(err).__name__}); start the server, or use --serve") from err
            time.sleep(0.2)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # one line per demo call would drown the output
        pass


class _DemoNoise(logging.Filter):
    """Drops the log lines each demo call causes on purpose (its 503s, slow
    answers, retries and the broken pipes of timed-out calls); breaker state
    changes still show."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "/demo/flaky" not in message and "Broken pipe" not in message


NOISY_LOGGERS = ("django.request", "django.server", "urllib3.connectionpool", "resilience.ops.middleware")


class DemoServer:
    """The project served on a background thread of this process (Django's
    threaded development server), so the dashboard shares this process's
    breakers and call-log buffer even on the local-memory cache."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8000) -> None:
        self.host, self.port = host, port
        self._httpd: ThreadedWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._noise = _DemoNoise()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> DemoServer:
        """Listen and serve; raises DemoError when the address is taken."""
        try:
            self._httpd = ThreadedWSGIServer((self.host, self.port), _QuietHandler, allow_reuse_address=True)
        except OSError as err:
            raise DemoError(f"cannot listen on {self.host}:{self.port}: {err.strerror or err}") from err
        self._httpd.set_app(get_internal_wsgi_application())
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="demo-server", daemon=True)
        self._thread.start()
        for name in NOISY_LOGGERS:
            logging.getLogger(name).addFilter(self._noise)
        return self

    def stop(self) -> None:
        for name in NOISY_LOGGERS:
            logging.getLogger(name).removeFilter(self._noise)
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None


# -- traffic ------------------------------------------------------------------------
@dataclass(frozen=True)
class Tick:
    """Calls finished during one reporting interval (and the state after it)."""

    elapsed: float  # seconds since the start
    calls: int
    ok: int
    cached: int
    errors: int  # failed calls that reached (or tried to reach) the upstream
    rejected: int  # refused by the open breaker, nothing sent
    breaker: str
    phase: str  # what the flaky upstream is doing now (same wall-clock cycle)


def _drive(name: str, interval: float, stop: threading.Event, counts: Counter[str],
           lock: threading.Lock) -> None:
    client = upstream(name)
    rng = random.Random()
    try:
        while not stop.is_set():
            try:
                response = client.get(f"/items/{rng.randint(1, 50)}")
                kind = "cached" if getattr(response, "from_cache", False) else "ok"
            except errors.BreakerOpen:
                kind = "rejected"
            except errors.UpstreamError:
                kind = "errors"
            with lock:
                counts[kind] += 1
            stop.wait(interval * (0.5 + rng.random()))
    except Exception:  # a driver thread must not die silently
        logger.exception("demo traffic thread failed")
    finally:
        connection.close()


def demo_traffic_run(*, report: Callable[[Tick], None], duration: float | None = None, threads: int = 4,
                     interval: float = 0.2, every: float = 1.0, name: str = DEMO_UPSTREAM,
                     stop: threading.Event | None = None) -> Counter[str]:
    """GET random `/items/<n>` through `upstream(name)` from `threads` threads,
    each pausing about `interval` s between calls, for `duration` seconds
    (None: until `stop` is set or KeyboardInterrupt). Calls `report(tick)`
    every `every` seconds; returns the totals by kind (ok, cached, errors,
    rejected). Raises UnknownUpstream when the upstream does not exist.
    """
    client = upstream(name)  # built here, once: the threads share it
    stop = stop or threading.Event()
    counts: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    lock = threading.Lock()
    workers = [threading.Thread(target=_drive, args=(name, interval, stop, counts, lock),
                                name=f"demo-traffic-{i}", daemon=True) for i in range(threads)]
    started = time.monotonic()
    cycle = FlakyCycle()

    def tick() -> None:
        with lock:
            batch = Counter(counts)
            counts.clear()
        totals.update(batch)
        breaker = client.breaker.status()["state"] if client.breaker is not None else "disabled"
        report(Tick(elapsed=round(time.monotonic() - started, 1), calls=sum(batch.values()),
                    ok=batch["ok"], cached=batch["cached"], errors=batch["errors"],
                    rejected=batch["rejected"], breaker=breaker, phase=cycle.current().name))

    for worker in workers:
        worker.start()
    try:
        while not stop.is_set():
            left = None if duration is None else duration - (time.monotonic() - started)
            if left is not None and left <= 0:
                break
            if stop.wait(every if left is None else min(every, left)):
                break
            tick()
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        for worker in workers:
            worker.join(client.policy.deadline + 1)
        with lock:
            totals.update(counts)
            counts.clear()
        call_log_flush()
    return totals
