"""Circuit breakers: pybreaker's state machine, shared by every worker, with
no lock held around the guarded call.

`pybreaker.CircuitBreaker.call` holds one lock for the whole guarded call, so
concurrent calls through one breaker would run one at a time. Here a call is
split in three steps instead: `admit()` before it (raises `CircuitOpen` when
the breaker is open, or half-open with every probe slot taken), then
`record_success()` or `record_failure()` after it. Only state transitions take
locks: pybreaker's own (inside `open()` / `half_open()` / `close()`) and a
cache lock that makes each transition a compare-and-set across processes, so N
workers failing together open the breaker once, at the threshold.

State lives in the Django cache (`breaker:<name>:...`): Redis while it is up,
so every worker shares it; process memory while Redis is down. A hot-path
call costs one cache round trip (`get_many` of state, opened-at and failures).

On failure of the cache itself the breaker keeps working on whichever store
the fallback backend serves from; it never raises cache errors.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pybreaker

from resilience.cache import default_cache

logger = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = pybreaker.STATE_CLOSED, pybreaker.STATE_OPEN, pybreaker.STATE_HALF_OPEN


class CircuitOpen(Exception):
    """The breaker refused the call; `retry_after` is seconds until a probe may pass."""

    def __init__(self, name: str, retry_after: float) -> None:
        super().__init__(f"circuit breaker for {name!r} is open; next probe in {retry_after:.2f}s")
        self.retry_after = max(0.0, retry_after)


@dataclass(frozen=True)
class Admission:
    """What `admit()` granted: a normal call, or one of the half-open probes."""

    probe: bool
    state: str


class CacheBreakerStorage(pybreaker.CircuitBreakerStorage):
    """pybreaker storage over the Django cache, atomic where it matters.

    Counters use the cache's atomic `incr`; `opened_at` is a float from the
    breaker's clock so tests can move time instead of sleeping.
    """

    def __init__(self, name: str, clock: Any = time.time) -> None:
        super().__init__(name)
        self.clock = clock
        base = f"breaker:{name}"
        self.k_state, self.k_opened = f"{base}:state", f"{base}:opened_at"
        self.k_fails, self.k_successes, self.k_probes = f"{base}:fails", f"{base}:ok", f"{base}:probes"
        self.k_lock = f"breaker:{name}:transition"

    def snapshot(self) -> tuple[str, float, int]:
        """(state, opened_at, consecutive failures) in one round trip."""
        got = default_cache().get_many([self.k_state, self.k_opened, self.k_fails])
        return got.get(self.k_state, CLOSED), got.get(self.k_opened, 0.0), got.get(self.k_fails, 0)

    def _incr(self, key: str, ttl: float | None = None) -> int:
        if default_cache().add(key, 1, timeout=ttl):
            return 1
        try:
            return default_cache().incr(key)
        except ValueError:  # expired (or the store switched) between add and incr
            default_cache().set(key, 1, timeout=ttl)
            return 1

    # -- pybreaker.CircuitBreakerStorage ----------------------------------------
    @property
    def state(self) -> str:
        return default_cache().get(self.k_state, CLOSED)

    @state.setter
    def state(self, state: str) -> None:
        default_cache().set(self.k_state, state, timeout=None)

    def increment_counter(self) -> None:
        self._incr(self.k_fails)

    def add_failure(self) -> int:
        return self._incr(self.k_fails)

    def reset_counter(self) -> None:
        default_cache().delete(self.k_fails)

    def increment_success_counter(self) -> None:
        self._incr(self.k_successes)

    def add_success(self) -> int:
        return self._incr(self.k_successes)

    def reset_success_counter(self) -> None:
        default_cache().delete(self.k_successes)

    @property
    def counter(self) -> int:
        return default_cache().get(self.k_fails, 0)

    @property
    def success_counter(self) -> int:
        return default_cache().get(self.k_successes, 0)

    @property
    def opened_at(self) -> datetime | None:
        value = default_cache().get(self.k_opened)
        return None if value is None else datetime.fromtimestamp(value, UTC)

    @opened_at.setter
    def opened_at(self, value: datetime) -> None:
        # pybreaker passes datetime.now(); the breaker's own clock is the truth.
        default_cache().set(self.k_opened, self.clock(), timeout=None)

    # -- half-open probe slots ------------------------------------------------------
    def take_probe(self, limit: int, ttl: float) -> bool:
        """Claim one of `limit` probe slots; a slot is freed by `release_probe`
        or, should its holder die, when the slot counter expires after `ttl`."""
        return self._incr(self.k_probes, ttl) <= limit

    def release_probe(self) -> None:
        try:
            default_cache().decr(self.k_probes)
        except ValueError:
            pass

    def reset_probes(self) -> None:
        default_cache().delete(self.k_probes)


class SharedBreaker(pybreaker.CircuitBreaker):
    """A pybreaker.CircuitBreaker whose state is shared through the cache and
    whose guarded call runs without any lock (see the module docstring).

    Parameters: `fail_max` consecutive failures open it; after
    `reset_timeout` seconds it lets `half_open_max` probes through at once
    (across all processes); `success_threshold` successful probes close it,
    one failed probe opens it again. `probe_ttl` bounds how long a crashed
    probe can hold its slot. `clock` is a seam for tests.
    """

    clock = staticmethod(time.time)
    #: A process that saw the breaker open rejects from memory, re-reading the
    #: shared state at most this often (seconds): an open breaker answers
    #: without a round trip to Redis, and an operator's reset elsewhere is seen
    #: within this time.
    open_recheck = 0.25

    def __init__(self, name: str, *, fail_max: int = 5, reset_timeout: float = 30,
                 success_threshold: int = 1, half_open_max: int = 1, probe_ttl: float = 60,
                 listeners: list[pybreaker.CircuitBreakerListener] | None = None) -> None:
        storage = CacheBreakerStorage(name, clock=lambda: type(self).clock())
        super().__init__(fail_max=fail_max, reset_timeout=reset_timeout,
                         success_threshold=success_threshold, listeners=listeners or [],
                         state_storage=storage, name=name, throw_new_error_on_trip=False)
        self.half_open_max = half_open_max
        self.probe_ttl = probe_ttl
        # Only this process's failures since the last reset make a success
        # worth a write; consecutive-failure counting stays exact all the same,
        # because the failure count read on admission is the shared one.
        self._local = threading.local()
        self._open_memo: tuple[float, float] | None = None  # (recheck at, monotonic; probe at, clock)

    @property
    def storage(self) -> CacheBreakerStorage:
        return self._state_storage  # type: ignore[return-value]

    # -- the three steps of a guarded call ------------------------------------------
    def admit(self) -> Admission:
        """Let a call through, or raise `CircuitOpen`. Never blocks on a lock
        held around another call."""
        memo = self._open_memo
        if memo is not None:
            now = self.clock()
            if now < memo[1] and time.monotonic() < memo[0]:
                raise CircuitOpen(self.name, memo[1] - now)
            self._open_memo = None
        state, opened_at, fails = self.storage.snapshot()
        self._local.fails_seen = fails
        if state == CLOSED:
            return Admission(probe=False, state=CLOSED)
        if state == OPEN:
            now = self.clock()
            remaining = opened_at + self.reset_timeout - now
            if remaining > 0:
                self._open_memo = (time.monotonic() + self.open_recheck, now + remaining)
                raise CircuitOpen(self.name, remaining)
            self._transition(OPEN, HALF_OPEN, "reset timeout elapsed")
        if self.storage.take_probe(self.half_open_max, self.probe_ttl):
            return Admission(probe=True, state=HALF_OPEN)
        # Every probe slot is taken: wait for a probe's verdict.
        raise CircuitOpen(self.name, min(self.reset_timeout, 1.0))

    def record_success(self, admission: Admission) -> None:
        if admission.probe:
            self.storage.release_probe()
            if self.storage.add_success() >= self.success_threshold:
                self._transition(HALF_OPEN, CLOSED, "probe succeeded")
        elif getattr(self._local, "fails_seen", 0):
            self.storage.reset_counter()
        for listener in self.listeners:
            listener.success(self)

    def record_failure(self, admission: Admission, exc: BaseException) -> None:
        for listener in self.listeners:
            listener.failure(self, exc)
        if admission.probe:
            self.storage.release_probe()
            self._transition(HALF_OPEN, OPEN, f"probe failed: {type(exc).__name__}")
        elif self.storage.add_failure() >= self.fail_max:
            self._transition(CLOSED, OPEN, f"{self.fail_max} consecutive failures")

    # -- state --------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Live state for dashboards and APIs."""
        return self.status_of(self.name, fail_max=self.fail_max, reset_timeout=self.reset_timeout)

    @classmethod
    def status_of(cls, name: str, *, fail_max: int, reset_timeout: float) -> dict[str, Any]:
        """Live state of breaker `name` from one read of the shared storage,
        without building a breaker (which would read it once more)."""
        state, opened_at, fails = CacheBreakerStorage(name).snapshot()
        retry_after = None
        if state == OPEN:
            retry_after = round(max(0.0, opened_at + reset_timeout - cls.clock()), 3)
        return {"state": state, "failures": fails, "fail_max": fail_max,
                "opened_at": opened_at or None, "retry_after": retry_after}

    def reset(self) -> bool:
        """Force the breaker closed (operator action). True when it was not closed."""
        self._open_memo = None
        state = self.storage.state
        if state == CLOSED:
            self.storage.reset_counter()
            return False
        return self._transition(state, CLOSED, "reset by operator")

    def _transition(self, expected: str, target: str, reason: str) -> bool:
        """Move expected -> target unless another worker already moved it.

        The cache lock makes this a compare-and-set across processes; the
        winner alone notifies listeners (one log line, one event per change).
        """
        lock = default_cache().lock(self.storage.k_lock, timeout=5, blocking_timeout=2)
        if not lock.acquire():
            return False
        try:
            if self.storage.state != expected:
                return False
            self._reason, self._from = reason, expected
            if target == OPEN:
                self.open()
            elif target == HALF_OPEN:
                self.storage.reset_probes()
                self.half_open()
            else:
                self.storage.reset_probes()
                self.close()
            return True
        finally:
            try:
                lock.release()
            except Exception:  # expired: the transition itself is done
                pass


class BreakerLogListener(pybreaker.CircuitBreakerListener):
    """One log line per state change."""

    def state_change(self, cb: pybreaker.CircuitBreaker, old_state: Any, new_state: Any) -> None:
        # The cached old state may be stale in this process; the transition knows.
        old = getattr(cb, "_from", None) or getattr(old_state, "name", "?")
        log = logger.warning if new_state.name == OPEN else logger.info
        log("breaker %s: %s -> %s (%s)", cb.name, old, new_state.name, getattr(cb, "_reason", ""))
