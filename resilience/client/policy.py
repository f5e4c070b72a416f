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

`Discipline` decides, for an upstream with several endpoints, whether a
failed attempt is retried on its own endpoint (by the transport, with the
policy's waits) or handed back so the call moves to another endpoint
(resilience.client.attempt): the retry discipline the README's "Retries and
failover" describes. `attempt_timeout` is the one place the timers of an
attempt are chosen.
"""
from __future__ import annotations

import asyncio
import contextvars
import random
import socket
import time
from dataclasses import dataclass, field
from itertools import takewhile
from typing import Any

from urllib3.exceptions import InvalidHeader
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
    breaker_probe_interval: float = 1.0
    context_fallback_model: str = ""
    content_policy_fallback_model: str = ""
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
            breaker_probe_interval=row.breaker_probe_interval,
            context_fallback_model=row.context_fallback_model,
            content_policy_fallback_model=row.content_policy_fallback_model,
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


#: Retries of a 429 without Retry-After on the primary (priority strategy) before moving on.
RATE_LIMIT_RETRIES = 2
#: Retries of a 5xx on the primary (priority strategy) before moving on.
SERVER_ERROR_RETRIES = 1
#: Never more than BURST_ATTEMPTS attempts at one endpoint in its first BURST_SECONDS of a call.
BURST_ATTEMPTS = 3
BURST_SECONDS = 3.0


@dataclass(frozen=True, slots=True)
class Discipline:
    """Whether a failed attempt stays on its endpoint (the transport retries
    it there, with the policy's backoff or the Retry-After asked) or is
    handed back so the call moves on to another endpoint.

    With no other endpoint available (`alternative` false) every retry stays,
    as for a single URL. Otherwise:
    - a failure without an answer (a timeout before the headers, a reset)
      moves on at once: a silent provider is left, not waited for again;
    - under the `priority` strategy (`sticky`: the primary is the model the
      caller wanted) a 5xx is retried once here, a 429 with a Retry-After
      of at most `retry_after_max` that fits in half the time left is waited
      out here, a 429 without one is retried up to `RATE_LIMIT_RETRIES`
      times with the policy's jittered backoff; then the call moves on;
      a 503 or 529 whose Retry-After outlasts what is left of the deadline
      moves on at once (the endpoint is cooled for it by the client);
    - under the other strategies every endpoint is as good: the call moves
      on at once;
    - never more than `BURST_ATTEMPTS` attempts at one endpoint;
    - never more than `retry_total` retries in the whole call, and a stay
      never takes the last one: that is kept for the other endpoint.
    """

    alternative: bool = False
    sticky: bool = False
    retry_after_max: float = 30.0
    retry_total: int = 0

    def stays(self, trace: Trace, *, response: Any = None, error: BaseException | None = None) -> bool:
        if len(trace.history) > self.retry_total:  # the call's retries are spent, on any endpoint
            return False
        if not self.alternative:
            return True
        if len(trace.history) >= self.retry_total:  # the last retry is kept for the other endpoint
            return False
        if error is not None or response is None or not self.sticky:
            return False
        here = trace.attempts_at(trace.endpoint)
        if here >= BURST_ATTEMPTS:
            return False
        status = response.status
        asked = _retry_after_seconds(response)
        if status == 429:
            if asked is None:
                return here <= RATE_LIMIT_RETRIES
            return asked <= self.retry_after_max and asked <= trace.remaining() / 2
        if asked is not None and status in (503, 529) and asked >= trace.remaining():
            return False  # it would wait past the deadline: another endpoint takes the call now
        return status >= 500 and here <= SERVER_ERROR_RETRIES


def waits_past_deadline(response: Any, trace: Trace) -> bool:
    """Whether `response` asks (Retry-After, on a status that may) for a wait
    longer than what is left of the call: then no retry follows it."""
    if response is None or getattr(response, "status", None) not in PolicyRetry.RETRY_AFTER_STATUS_CODES:
        return False
    asked = _retry_after_seconds(response)
    return asked is not None and asked >= trace.remaining()


def _retry_after_seconds(response: Any) -> float | None:
    """Seconds a `Retry-After` asks for (a number or an HTTP date, as urllib3
    reads it); None when absent or unreadable."""
    value = str(response.headers.get("Retry-After", "") or "").strip()
    if not value:
        return None
    try:
        return float(Retry(0).parse_retry_after(value))
    except InvalidHeader:
        return None


@dataclass
class Trace:
    """Per-call state shared with urllib3's retry machinery.

    One trace spans every attempt of a call, across the endpoints it fails
    over to: `endpoint` names the endpoint being tried ("" for a single-URL
    upstream), and `discipline` (when set) decides whether a failure is
    retried on that endpoint by the transport or handed back to the client,
    which moves the call to another endpoint (resilience.client.attempt)."""

    deadline: float
    started: float = field(default_factory=time.monotonic)
    history: list[dict[str, Any]] = field(default_factory=list)
    endpoint: str = ""
    discipline: Discipline | None = None

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def attempts_at(self, endpoint: str) -> int:
        """Failed attempts at `endpoint` in this call so far."""
        return sum(1 for entry in self.history if entry.get("endpoint", "") == endpoint)

    def burst_spent(self, endpoint: str) -> bool:
        """Whether `endpoint` had `BURST_ATTEMPTS` attempts in this call, the
        first less than `BURST_SECONDS` ago."""
        times = [entry["at_ms"] for entry in self.history if entry.get("endpoint", "") == endpoint]
        elapsed_ms = (time.monotonic() - self.started) * 1000
        return len(times) >= BURST_ATTEMPTS and elapsed_ms - times[0] < BURST_SECONDS * 1000


def header_wait(policy: Policy, *, stream: bool = False) -> float:
    """Seconds an attempt waits for the provider's answer to begin (its
    headers) and between reads: the one place this timer is chosen
    (bounded by the call's deadline in `attempt_timeout`).

    A stream's headers come before its first token, so a streamed attempt
    waits at most `first_token_timeout` for them (when set): a provider that
    never answers costs that, not `read_timeout`. A plain answer's headers
    come only once its whole text is written, which can take far longer than
    a first token; it keeps `read_timeout`."""
    if stream and policy.first_token_timeout > 0:
        return min(policy.first_token_timeout, policy.read_timeout)
    return policy.read_timeout


def attempt_timeout(policy: Policy, trace: Trace, *, stream: bool = False) -> DeadlineTimeout:
    """The connect and read timeouts of one attempt, never past the deadline."""
    return DeadlineTimeout(policy.connect_timeout, header_wait(policy, stream=stream), trace.deadline)


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
    - `Retry-After` is honoured up to `retry_after_max` seconds (on 413, 429,
      503 and Anthropic's 529).
    - A wait that would end past the call's deadline raises `DeadlineExceeded`
      instead of sleeping: failing now beats failing later. An answer whose
      own Retry-After (before the cap) outlasts the deadline is not retried
      at all: the call ends at once with that answer (its history entry says
      `retry_after_past_deadline`).
    - Every failed attempt is appended to the call's `Trace.history`.
    - A failure no retry can fix ends the call at once: a host name that does
      not resolve, a connection refused outright.
    """

    sleeper = staticmethod(time.sleep)
    asleeper = staticmethod(asyncio.sleep)
    #: Anthropic's 529 (overloaded) asks for its wait as a 503 does.
    RETRY_AFTER_STATUS_CODES = Retry.RETRY_AFTER_STATUS_CODES | {529}

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
            stop = trace.discipline is not None and not trace.discipline.stays(
                trace, response=response, error=error)
            if not stop and self.respect_retry_after_header and waits_past_deadline(response, trace):
                entry["error"], stop = "retry_after_past_deadline", True
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

    async def asleep(self, response: Any = None) -> None:
        """`sleep` for the async transport (its seam: `asleeper`)."""
        wait = self.wait_for(response)
        if wait > 0:
            await self.asleeper(wait)
