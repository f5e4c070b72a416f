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
so every worker shares it; process memory while Redis is down. A healthy call
costs no round trip: each process keeps the last snapshot it read (state,
opened-at, consecutive failures) and re-reads it at most every
`closed_recheck` seconds (`open_recheck` while open). Failures are counted in
the shared store at once (atomic `incr`), so N workers failing together open
the breaker at the threshold; what another worker's failure or an operator's
reset changes is seen here within the recheck interval.

pybreaker is composed, not subclassed: its state machine (`open()`,
`half_open()`, `close()` over our shared storage) makes each transition, and
its locked `call()` is never used. Listeners receive a `Transition` value
after the transition's lock is released, so no call waits on what a listener
does (the client's listener queues a database record, see
resilience.client.receivers).

Recovery: an open breaker first waits `probe_interval` seconds, then lets
one probe through (across all workers: the probe slots are shared). A probe
that fails opens it again for twice the last wait, up to `reset_timeout`;
one that succeeds closes it and the next opening starts short again. The
count of failed probes since the breaker opened is shared with the state
(`breaker:<name>:reopens`), so every worker computes the same wait. So an
endpoint that recovers is back in use within `reset_timeout` seconds (plus
one probe) however long it was down, while a dead one costs one probe per
wait, never a burst.

On failure of the cache itself the breaker keeps working on whichever store
the fallback backend serves from; it never raises cache errors.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pybreaker
from redis.exceptions import LockError

from resilience.cache import cache_is_shared, default_cache
from resilience.cache.breakers import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    CacheBreakerStorage,
    breaker_forced,
    breaker_name,
    breaker_status_of,
    wait_after,
)
from resilience.client.ahead import Ahead

logger = logging.getLogger(__name__)

class CircuitOpen(Exception):
    """The breaker refused the call; `retry_after` is seconds until a probe may pass."""

    def __init__(self, name: str, retry_after: float) -> None:
        super().__init__(f"circuit breaker for {name!r} is open; next probe in {retry_after:.2f}s")
        self.retry_after = max(0.0, retry_after)


class StoreNeeded(Exception):
    """A memory-only read (`admit(in_memory=True)`, `Pool.choose(in_memory=True)`) would need a
    round trip to the shared store; raised before anything changed, so the caller may do it again
    where a round trip is allowed (resilience.client.core: off the event loop)."""


@dataclass(frozen=True, slots=True)
class Admission:
    """What `admit()` granted: a normal call, or one of the half-open probes.
    `fails_seen` is the shared failure count this process knew of, so a
    success resets the count only when there is one to reset."""

    probe: bool
    state: str
    fails_seen: int = 0


@dataclass(frozen=True, slots=True)
class Transition:
    """One state change, as listeners receive it."""

    upstream: str
    old: str
    new: str
    reason: str


@dataclass(frozen=True, slots=True)
class _Snapshot:
    state: str
    opened_at: float
    fails: int
    read_at: float  # time.monotonic()
    reopens: int = 0  # failed probes since the breaker opened


class SharedBreaker:
    """A circuit breaker shared by every worker, with no lock held around the
    guarded call (see the module docstring).

    Parameters: `fail_max` consecutive failures open it; after
    `probe_interval` seconds (None: `reset_timeout`) it lets `half_open_max`
    probes through at once (across all processes); `success_threshold`
    successful probes close it, one failed probe opens it again for twice
    the last wait, at most `reset_timeout` (see `wait`). `probe_ttl` bounds how long a crashed
    probe can hold its slot. `listeners` are called with a `Transition` by the
    process that made it. `clock` is a seam for tests.
    """

    clock = staticmethod(time.time)
    #: Seconds between re-reads of the shared state while it was open (an
    #: open breaker answers from memory) and while it was closed (a healthy
    #: call makes no round trip).
    open_recheck = 0.25
    closed_recheck = 0.25

    def __init__(self, name: str, *, fail_max: int = 5, reset_timeout: float = 30,
                 probe_interval: float | None = None, success_threshold: int = 1, half_open_max: int = 1,
                 probe_ttl: float = 60, listeners: list[Callable[[Transition], None]] | None = None) -> None:
        self.name = name
        self.fail_max = fail_max
        self.reset_timeout = reset_timeout
        self.probe_interval = reset_timeout if probe_interval is None else probe_interval
        self.success_threshold = success_threshold
        self.half_open_max = half_open_max
        self.probe_ttl = probe_ttl
        self.listeners = list(listeners or [])
        self.storage = CacheBreakerStorage(name, clock=lambda: type(self).clock())
        self._machine: pybreaker.CircuitBreaker | None = None
        self._snapshot: _Snapshot | None = None
        self._ahead = Ahead(f"breaker {name}")

    @property
    def machine(self) -> pybreaker.CircuitBreaker:
        """pybreaker's state machine over the shared storage (built on the
        first transition: building it reads the shared state)."""
        if self._machine is None:
            self._machine = pybreaker.CircuitBreaker(
                fail_max=self.fail_max, reset_timeout=self.reset_timeout,
                success_threshold=self.success_threshold, state_storage=self.storage, name=self.name,
                throw_new_error_on_trip=False)
        return self._machine

    # -- the three steps of a guarded call ------------------------------------------
    def _read(self) -> _Snapshot:
        state, opened_at, fails, reopens = self.storage.snapshot()
        snap = self._snapshot = _Snapshot(state, opened_at, fails, time.monotonic(), reopens)
        return snap

    def wait(self, reopens: int) -> float:
        """Seconds an open breaker waits before a probe after `reopens`
        failed probes: the probe interval, doubled per failed probe, capped
        by the reset timeout."""
        return wait_after(reopens, probe_interval=self.probe_interval, reset_timeout=self.reset_timeout)

    def store_due(self) -> bool:
        """Whether `admit()` would make a round trip now (memory only): no
        snapshot yet or one due for a re-read, an open breaker whose wait is
        over, or a half-open one (probe slots are shared)."""
        snap = self._snapshot
        if snap is None:
            return True
        age = time.monotonic() - snap.read_at
        if age >= (self.closed_recheck if snap.state == CLOSED else self.open_recheck):
            return True
        if snap.state == CLOSED:
            self._read_ahead(age)
            return False
        return snap.state != OPEN or snap.opened_at + self.wait(snap.reopens) <= self.clock()

    def _read_ahead(self, age: float) -> None:
        """Re-read a closed snapshot `age` seconds old in a thread when it is in the last quarter of
        `closed_recheck` (resilience.client.ahead: on the event loop, while Redis serves), so the
        loop's calls find it fresh instead of waiting for the read. An open or half-open one is
        read when due (probe slots are shared)."""
        if self._ahead.soon(age, self.closed_recheck) and cache_is_shared(default_cache()):
            self._ahead.start(self._read)

    def reread_due(self) -> None:
        """Re-read the shared state when this process's snapshot is due for it
        (a round trip then: call it off the event loop)."""
        snap = self._snapshot
        if snap is None or time.monotonic() - snap.read_at >= (
                self.closed_recheck if snap.state == CLOSED else self.open_recheck):
            self._read()

    def admit(self, *, in_memory: bool = False) -> Admission:
        """Let a call through, or raise `CircuitOpen`. Never blocks on a lock
        held around another call; a healthy call reads process memory only.
        `in_memory`: raise `StoreNeeded` (nothing changed yet) instead of
        making a round trip to the shared store (a re-read that is due, an
        open breaker whose wait is over, a probe slot)."""
        snap = self._snapshot
        if snap is None or time.monotonic() - snap.read_at >= (
                self.closed_recheck if snap.state == CLOSED else self.open_recheck):
            if in_memory:
                raise StoreNeeded(self.name)
            snap = self._read()
        elif in_memory and snap.state == CLOSED:
            self._read_ahead(time.monotonic() - snap.read_at)
        if snap.state == CLOSED:
            return Admission(probe=False, state=CLOSED, fails_seen=snap.fails)
        if snap.state == OPEN:
            now = self.clock()
            remaining = snap.opened_at + self.wait(snap.reopens) - now
            if remaining > 0:
                raise CircuitOpen(self.name, remaining)
        if in_memory:
            raise StoreNeeded(self.name)
        if snap.state == OPEN:
            now = self.clock()
            snap = self._read()  # the memo said open: is it still, everywhere?
            if snap.state == CLOSED:
                return Admission(probe=False, state=CLOSED, fails_seen=snap.fails)
            if snap.state == OPEN:
                remaining = snap.opened_at + self.wait(snap.reopens) - now
                if remaining > 0:
                    raise CircuitOpen(self.name, remaining)
                self._transition(OPEN, HALF_OPEN, "probe wait elapsed", opened_at=snap.opened_at)
        return self._probe()

    def _probe(self) -> Admission:
        """A probe slot of a half-open breaker, or `CircuitOpen`. The state is
        read again once a slot is taken: a process whose memory still says
        half-open must not probe a breaker that a failed probe has just
        opened again (that was a burst of probes, one per process)."""
        if not self.storage.take_probe(self.half_open_max, self.probe_ttl):
            # Every probe slot is taken: wait for a probe's verdict.
            raise CircuitOpen(self.name, min(self.probe_interval, 1.0))
        snap = self._read()
        if snap.state == HALF_OPEN:
            return Admission(probe=True, state=HALF_OPEN)
        self.storage.release_probe()
        if snap.state == CLOSED:
            return Admission(probe=False, state=CLOSED, fails_seen=snap.fails)
        raise CircuitOpen(self.name, max(0.0, snap.opened_at + self.wait(snap.reopens) - self.clock()))

    def looks_open(self) -> bool:
        """Whether this process's last read of the shared state said open, with
        the reset timeout not yet over (memory only: no round trip, no probe
        slot taken). A hint for choosing among endpoints; `admit()` decides."""
        snap = self._snapshot
        return snap is not None and snap.state == OPEN and \
            snap.opened_at + self.wait(snap.reopens) > self.clock()

    def record_success(self, admission: Admission) -> None:
        if admission.probe:
            # The slot is given back after the transition, so no other probe slips in between.
            if self.storage.add_success() >= self.success_threshold:
                self._transition(HALF_OPEN, CLOSED, "probe succeeded")
            self.storage.release_probe()
        elif admission.fails_seen:
            self.storage.reset_counter()
            self._remember(fails=0)

    def record_failure(self, admission: Admission, exc: BaseException) -> None:
        if admission.probe:
            self._transition(HALF_OPEN, OPEN, f"probe failed: {type(exc).__name__}")
            self.storage.release_probe()
            return
        fails = self.storage.add_failure()
        if fails >= self.fail_max:
            self._transition(CLOSED, OPEN, f"{self.fail_max} consecutive failures")
            self._read()  # opened here or by another worker: stop admitting now, not at the next re-read
        else:
            self._remember(fails=fails)

    def _remember(self, *, fails: int) -> None:
        """Keep this process's own count change in its snapshot (so the next
        success knows there is a count to reset)."""
        snap = self._snapshot
        if snap is not None and snap.state == CLOSED:
            self._snapshot = _Snapshot(CLOSED, snap.opened_at, fails, snap.read_at)

    # -- state --------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Live state for dashboards and APIs."""
        return self.status_of(self.name, fail_max=self.fail_max, reset_timeout=self.reset_timeout,
                              probe_interval=self.probe_interval)

    @classmethod
    def status_of(cls, name: str, *, fail_max: int, reset_timeout: float,
                  probe_interval: float | None = None) -> dict[str, Any]:
        """Live state of breaker `name` on this class's clock (resilience.cache.breakers)."""
        return breaker_status_of(name, fail_max=fail_max, reset_timeout=reset_timeout,
                                 probe_interval=probe_interval, now=cls.clock())

    def reset(self) -> bool:
        """Force the breaker closed (operator action). True when it was not closed."""
        self._snapshot = None
        state = self.storage.state
        if state == CLOSED:
            self.storage.reset_counter()
            return False
        return self._transition(state, CLOSED, "reset by operator")

    def _transition(self, expected: str, target: str, reason: str, *, opened_at: float | None = None) -> bool:
        """Move expected -> target unless another worker already moved it.

        The cache lock makes this a compare-and-set across processes; the
        winner alone notifies listeners (one log line, one event per change),
        after the lock is released. A worker that cannot get the lock within
        `transition_wait` leaves the change to the one holding it. With
        `opened_at`, the open state must also be the opening this worker saw:
        a breaker that was probed and opened again meanwhile is left alone
        (else a late worker would start a second probe at once).
        """
        lock = default_cache().lock(self.storage.k_lock, timeout=5, blocking_timeout=self.transition_wait)
        if not lock.acquire():
            return False
        try:
            if self.storage.state != expected:
                return False
            if opened_at is not None and default_cache().get(self.storage.k_opened, 0.0) != opened_at:
                return False
            machine = self.machine
            if target == OPEN:
                if expected == HALF_OPEN:
                    self.storage.count_reopen()  # the next wait doubles
                else:
                    self.storage.reset_reopens()
                machine.open()
            elif target == HALF_OPEN:
                self.storage.reset_probes()
                machine.half_open()
            else:
                self.storage.reset_probes()
                self.storage.reset_reopens()
                machine.close()
        finally:
            _release(lock, self.name)
        self._snapshot = None
        change = Transition(self.name, expected, target, reason)
        for listener in self.listeners:
            listener(change)
        return True

    #: Longest wait (seconds) for another worker's transition in progress.
    transition_wait = 0.5

    # -- operator controls (resilience.ops.services.breaker_*) ---------------------------------
    def force_open(self, *, seconds: float, by: str, reason: str = "") -> bool:
        """Open the breaker now for `seconds` (maintenance, drills), in every
        worker, recorded with who did it; an open breaker's time is set anew.

        The shared state is what any trip writes, with `opened_at` placed so
        that the reset timeout ends `seconds` from now: every worker refuses
        calls until then without a check of its own, and afterwards it
        half-opens and a probe decides, as after any trip. The forced-open
        note (`forced_status`) expires with it. False when another worker's
        transition held the lock for `transition_wait` (nothing changed)."""
        store = default_cache()
        lock = store.lock(self.storage.k_lock, timeout=5, blocking_timeout=self.transition_wait)
        if not lock.acquire():
            return False
        try:
            old = self.storage.state
            until = self.clock() + seconds
            store.set_many({self.storage.k_state: OPEN, self.storage.k_opened: until - self.reset_timeout},
                           timeout=None)
            store.set(self.storage.k_forced, {"until": until, "by": by, "reason": reason},
                      timeout=math.ceil(seconds) + 1)
            self.storage.reset_counter()
            self.storage.reset_probes()
            self.storage.reset_success_counter()
        finally:
            _release(lock, self.name)
        self._snapshot = None
        note = f"forced open by {by} for {seconds:g}s" + (f": {reason}" if reason else "")
        change = Transition(self.name, old, OPEN, note)
        for listener in self.listeners:
            listener(change)
        return True

    def close_by(self, *, by: str, reason: str = "") -> bool:
        """Close the breaker now (an operator's reset), recorded with who did
        it, ending a forced opening too. True when it was not closed."""
        self._snapshot = None
        default_cache().delete(self.storage.k_forced)
        state = self.storage.state
        if state == CLOSED:
            self.storage.reset_counter()
            return False
        note = f"reset by {by}" + (f": {reason}" if reason else "")
        return self._transition(state, CLOSED, note)

    @classmethod
    def forced_status(cls, name: str) -> dict[str, Any] | None:
        """Breaker `name`'s forced opening still in force ({until, by, reason}), or None."""
        return breaker_forced(name, now=cls.clock())


def _release(lock: Any, name: str) -> None:
    try:
        lock.release()
    except LockError:  # expired under us: the transition itself is done
        logger.debug("breaker %s: transition lock had expired", name)


def log_transition(change: Transition) -> None:
    """One log line per state change (a listener)."""
    log = logger.warning if change.new == OPEN else logger.info
    log("breaker %s: %s -> %s (%s)", change.upstream, change.old, change.new, change.reason)


__all__ = ["CLOSED", "HALF_OPEN", "OPEN", "Admission", "CacheBreakerStorage", "CircuitOpen", "SharedBreaker",
           "Transition", "breaker_name", "log_transition", "wait_after"]
