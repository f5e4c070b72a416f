"""The shared circuit breakers' state as the cache holds it, and its reads.

State lives in the Django cache under `breaker:<name>:...` (state,
opened-at, consecutive failures, successes, probe slots, failed probes since
opening, a forced opening): `CacheBreakerStorage` is pybreaker's storage
interface over those keys, atomic where it matters (the cache's `incr`).
`breaker_status_of` and `breaker_forced` read one breaker's live state in one
round trip without building a breaker.

Owned here, one floor below the client and telemetry, so both read the same
state without importing each other: the client's `SharedBreaker`
(resilience.client.breaker) drives the state machine over this storage;
telemetry's selectors and metrics read it for displays and scrapes. It imports
only pybreaker and the cache. On failure of the cache itself reads and writes
go to whichever store the fallback backend serves from; nothing here raises
cache errors.
"""
from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pybreaker

from resilience.cache.registry import default_cache

CLOSED, OPEN, HALF_OPEN = pybreaker.STATE_CLOSED, pybreaker.STATE_OPEN, pybreaker.STATE_HALF_OPEN


class BreakerClock:
    """The clock the readers below measure a wait on (a seam: tests move it
    together with `SharedBreaker.clock`)."""

    now = staticmethod(time.time)


def breaker_name(upstream: str, endpoint: str) -> str:
    """The shared breaker's name: the upstream's own for its implicit endpoint."""
    return f"{upstream}/{endpoint}" if endpoint else upstream


def wait_after(reopens: int, *, probe_interval: float, reset_timeout: float) -> float:
    """The probe wait after `reopens` failed probes: the probe interval,
    doubled per failed probe, capped by the reset timeout."""
    return min(reset_timeout, probe_interval * 2 ** min(reopens, 32))


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
        self.k_reopens = f"{base}:reopens"
        self.k_lock = f"breaker:{name}:transition"
        self.k_forced = f"{base}:forced"

    def snapshot(self) -> tuple[str, float, int, int]:
        """(state, opened_at, consecutive failures, failed probes since it
        opened) in one round trip."""
        got = default_cache().get_many([self.k_state, self.k_opened, self.k_fails, self.k_reopens])
        return (got.get(self.k_state, CLOSED), got.get(self.k_opened, 0.0), got.get(self.k_fails, 0),
                got.get(self.k_reopens, 0))

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
        if self._incr(self.k_probes, ttl) <= limit:
            return True
        self.release_probe()  # a refused claim holds no slot
        return False

    def release_probe(self) -> None:
        try:
            default_cache().decr(self.k_probes)
        except ValueError:  # the slot counter expired meanwhile: nothing to give back
            pass

    def reset_probes(self) -> None:
        default_cache().delete(self.k_probes)

    def count_reopen(self) -> None:
        self._incr(self.k_reopens)

    def reset_reopens(self) -> None:
        default_cache().delete(self.k_reopens)


def breaker_status_of(name: str, *, fail_max: int, reset_timeout: float, probe_interval: float | None = None,
                      now: float | None = None) -> dict[str, Any]:
    """Live state of breaker `name` from one read of the shared storage:
    state, failures, fail_max, opened_at and (open) retry_after. `now` is
    the breaker clock's time (default: `BreakerClock.now()`)."""
    state, opened_at, fails, reopens = CacheBreakerStorage(name).snapshot()
    retry_after = None
    if state == OPEN:
        wait = wait_after(reopens, reset_timeout=reset_timeout,
                          probe_interval=reset_timeout if probe_interval is None else probe_interval)
        retry_after = round(max(0.0, opened_at + wait - (BreakerClock.now() if now is None else now)), 3)
    return {"state": state, "failures": fails, "fail_max": fail_max,
            "opened_at": opened_at or None, "retry_after": retry_after}


def breaker_forced(name: str, *, now: float | None = None) -> dict[str, Any] | None:
    """Breaker `name`'s forced opening still in force ({until, by, reason}), or None."""
    forced = default_cache().get(CacheBreakerStorage(name).k_forced)
    if forced is None or forced.get("until", 0) <= (BreakerClock.now() if now is None else now):
        return None
    return forced
