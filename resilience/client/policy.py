"""The resolved policy of one upstream: an immutable snapshot of its row, and
the urllib3 pieces built from it (`PolicyRetry`, `DeadlineTimeout`).

Both transports use the same pieces: urllib3 drives `PolicyRetry` for the
sync client (requests), and the async client's attempt loop calls the same
`increment` / `is_retry` / `wait_for` (resilience.client.asend), so when to
retry, how long to wait and when to give up are decided in one place.

Every call carries a `Trace` in a context variable: its deadline and the
history of failed attempts. urllib3 runs retries in the calling thread, so
`PolicyRetry` and `DeadlineTimeout` read the deadline from there and no call
outlives it: a retry whose wait would pass the deadline is not waited for
(`DeadlineExceeded`), and every connect and read timeout is clamped to the
time left.
"""
from __future__ import annotations

import contextvars
import random
import socket
import time
from dataclasses import dataclass, field
from itertools import takewhile
from typing import Any

from urllib3.util.retry import Retry
from urllib3.util.timeout import Timeout

# The shortest timeout handed to a socket once the deadline has passed: the
# attempt then fails at once and the retry logic gives up.
MIN_TIMEOUT = 0.001


@dataclass(frozen=True)
class Policy:
    name: str
    base_url: str
    enabled: bool
    connect_timeout: float
    read_timeout: float
    deadline: float
    retry_total: int
    retry_backoff_factor: float
    retry_backoff_max: float
    retry_jitter: float
    retry_statuses: frozenset[int]
    retry_methods: frozenset[str]
    retry_respect_retry_after: bool
    retry_after_max: float
    breaker_enabled: bool
    breaker_fail_max: int
    breaker_reset_timeout: float
    breaker_success_threshold: int
    breaker_half_open_max: int
    cache_ttl: int
    cache_methods: frozenset[str]
    cache_vary_headers: tuple[str, ...]
    cache_serve_stale: bool
    cache_stale_max_age: int
    single_flight: bool
    pool_size: int
    bulkhead_max: int
    bulkhead_wait: float
    log_sample_rate: float
    default_headers: dict[str, str]
    auth_kind: str
    auth_env_var: str
    auth_name: str
    health_path: str
    endpoint_strategy: str = "weighted"
    max_ejection_percent: int = 100
    first_token_timeout: float = 0.0
    stream_idle_timeout: float = 0.0
    stream_max_seconds: float = 600.0

    @classmethod
    def from_model(cls, row: Any) -> Policy:
        return cls(
            name=row.name, base_url=row.base_url.rstrip("/"), enabled=row.enabled,
            connect_timeout=row.connect_timeout, read_timeout=row.read_timeout, deadline=row.deadline,
            retry_total=row.retry_total, retry_backoff_factor=row.retry_backoff_factor,
            retry_backoff_max=row.retry_backoff_max, retry_jitter=row.retry_jitter,
            retry_statuses=frozenset(row.retry_statuses or ()),
            retry_methods=frozenset(m.upper() for m in row.retry_methods or ()),
            retry_respect_retry_after=row.retry_respect_retry_after,
            retry_after_max=row.retry_after_max,
            breaker_enabled=row.breaker_enabled, breaker_fail_max=row.breaker_fail_max,
            breaker_reset_timeout=row.breaker_reset_timeout,
            breaker_success_threshold=row.breaker_success_threshold,
            breaker_half_open_max=row.breaker_half_open_max,
            cache_ttl=row.cache_ttl, cache_methods=frozenset(m.upper() for m in row.cache_methods or ()),
            cache_vary_headers=tuple(sorted(h.lower() for h in row.cache_vary_headers or ())),
            cache_serve_stale=row.cache_serve_stale, cache_stale_max_age=row.cache_stale_max_age,
            single_flight=row.single_flight, pool_size=row.pool_size,
            bulkhead_max=row.bulkhead_max, bulkhead_wait=row.bulkhead_wait,
            log_sample_rate=row.log_sample_rate,
            default_headers=dict(row.default_headers or {}),
            auth_kind=row.auth_kind, auth_env_var=row.auth_env_var, auth_name=row.auth_name,
            health_path=row.health_path,
            endpoint_strategy=row.endpoint_strategy, max_ejection_percent=row.max_ejection_percent,
            first_token_timeout=row.first_token_timeout, stream_idle_timeout=row.stream_idle_timeout,
            stream_max_seconds=row.stream_max_seconds,
        )

    def build_retry(self) -> PolicyRetry:
        return PolicyRetry(
            total=self.retry_total, connect=None, read=None, status=None, other=0, redirect=0,
            allowed_methods=self.retry_methods, status_forcelist=self.retry_statuses,
            backoff_factor=self.retry_backoff_factor, backoff_max=self.retry_backoff_max,
            backoff_jitter=self.retry_jitter,
            respect_retry_after_header=self.retry_respect_retry_after,
            raise_on_status=False, raise_on_redirect=False,
            retry_after_max=self.retry_after_max,
        )


def unfixable(error: BaseException) -> bool:
    """A name that does not resolve or a port that refuses: retrying within
    one call's deadline will not change it."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, (socket.gaierror, ConnectionRefusedError)):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


class DeadlineExceeded(Exception):
    """The next retry could not start (or finish waiting) before the deadline."""

    def __init__(self, wanted_wait: float, remaining: float) -> None:
        super().__init__(f"retry wait of {wanted_wait:.3f}s exceeds the {max(remaining, 0):.3f}s "
                         "left before the deadline")
        self.wanted_wait = wanted_wait


@dataclass
class Trace:
    """Per-call state shared with urllib3's retry machinery.

    One trace spans every attempt of a call, across the endpoints it fails
    over to: `endpoint` names the endpoint being tried ("" for a single-URL
    upstream), and `stop_after` (when set) is the history length at which
    the transport stops retrying and hands the failure back, so the client
    can move the retry to another endpoint (resilience.client.core)."""

    deadline: float
    started: float = field(default_factory=time.monotonic)
    history: list[dict[str, Any]] = field(default_factory=list)
    endpoint: str = ""
    stop_after: int | None = None

    def remaining(self) -> float:
        return self.deadline - time.monotonic()


current_trace: contextvars.ContextVar[Trace | None] = contextvars.ContextVar("resilience_trace",
                                                                              default=None)


class DeadlineTimeout(Timeout):
    """A urllib3 Timeout whose connect and read timeouts never pass `deadline`
    (a `time.monotonic()` value), however many attempts reuse it."""

    def __init__(self, connect: float, read: float, deadline: float) -> None:
        super().__init__(connect=connect, read=read)
        self.deadline = deadline

    def clone(self) -> DeadlineTimeout:
        return DeadlineTimeout(self._connect, self._read, self.deadline)  # type: ignore[arg-type]

    def _left(self) -> float:
        return max(MIN_TIMEOUT, self.deadline - time.monotonic())

    @property
    def connect_timeout(self) -> float:  # type: ignore[override]
        return min(float(self._connect), self._left())  # type: ignore[arg-type]

    @property
    def read_timeout(self) -> float:  # type: ignore[override]
        return min(float(self._read), self._left())  # type: ignore[arg-type]


class PolicyRetry(Retry):
    """urllib3 Retry with the policy's rules and the call's deadline.

    - Backoff before retry n is `backoff_factor * 2**(n-1)` (+ jitter, capped
      at `backoff_max`): factor 2 waits 2 s, 4 s, 8 s. Stock urllib3 does not
      wait before the first retry, which is not what a policy author expects.
    - `Retry-After` is honoured up to `retry_after_max` seconds.
    - A wait that would end past the call's deadline raises `DeadlineExceeded`
      instead of sleeping: failing now beats failing later.
    - Every failed attempt is appended to the call's `Trace.history`.
    - A failure no retry can fix ends the call at once: a host name that does
      not resolve, a connection refused outright.
    """

    sleeper = staticmethod(time.sleep)

    def __init__(self, *args: Any, retry_after_max: float = 30.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.retry_after_max = retry_after_max

    def new(self, **kw: Any) -> PolicyRetry:
        retry = super().new(**kw)
        retry.retry_after_max = self.retry_after_max
        return retry

    def increment(self, method: str | None = None, url: str | None = None, response: Any = None,
                  error: Exception | None = None, _pool: Any = None, _stacktrace: Any = None) -> Retry:
        trace = current_trace.get()
        stop = False
        if trace is not None:
            entry = {
                "status": getattr(response, "status", None),
                "error": type(error).__name__ if error is not None else None,
                "at_ms": round((time.monotonic() - trace.started) * 1000, 1),
                "wait_s": 0.0,
            }
            if trace.endpoint:
                entry["endpoint"] = trace.endpoint
            trace.history.append(entry)
            stop = trace.stop_after is not None and len(trace.history) >= trace.stop_after
        if stop or (error is not None and unfixable(error)):  # no attempts left for this one
            exhausted = self.new(total=0, connect=0, read=0, status=0, other=0)
            return Retry.increment(exhausted, method, url, response, error, _pool, _stacktrace)
        return super().increment(method, url, response, error, _pool, _stacktrace)

    def get_backoff_time(self) -> float:
        failures = len(list(takewhile(lambda h: h.redirect_location is None, reversed(self.history))))
        if failures < 1 or self.backoff_factor <= 0:
            return 0.0
        value = self.backoff_factor * (2 ** (failures - 1))
        if self.backoff_jitter:
            value += random.random() * self.backoff_jitter
        return float(max(0.0, min(self.backoff_max, value)))

    def get_retry_after(self, response: Any) -> float | None:
        seconds = super().get_retry_after(response)
        return None if seconds is None else min(seconds, self.retry_after_max)

    def wait_for(self, response: Any = None) -> float:
        """Seconds to wait before the next attempt: Retry-After when the
        policy honours it (capped), else the backoff. Raises
        `DeadlineExceeded` when the wait would end past the call's deadline."""
        wait = None
        if self.respect_retry_after_header and response is not None:
            wait = self.get_retry_after(response)
        if wait is None:
            wait = self.get_backoff_time()
        trace = current_trace.get()
        if trace is not None:
            remaining = trace.remaining()
            if trace.history:
                trace.history[-1]["wait_s"] = round(wait, 3)
            if wait >= remaining:
                raise DeadlineExceeded(wait, remaining)
        return wait

    def sleep(self, response: Any = None) -> None:
        wait = self.wait_for(response)
        if wait > 0:
            self.sleeper(wait)
