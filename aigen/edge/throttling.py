"""The per-user throttle on generate: a fixed-window counter in the cache.

DRF's `UserRateThrottle` keeps a list of request times per user, read and
rewritten on every request: its cost grows with the rate, and two workers
updating it at once lose each other's entries. Here each user has one counter
per window (`throttle:generate:<user>:<window>`), bumped with the cache's
`incr_window` (INCR and EXPIRE NX pipelined while Redis serves, no script):
one round trip, exact across workers. The price is the usual fixed-window burst: up to twice the rate
across a window boundary.

The rate is `REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]["generate"]` (e.g.
"60/min"), read when the throttle is built, so `override_settings` works.
On a cache outage the fallback cache counts in local memory (per process).

A caller with limits of its own (aigen.generation.quotas) has its window
counted by its admission script instead (`window`): same key, same count, one
round trip for both.

Far from the limit a worker counts requests in blocks (`WindowLeases`): one
round trip adds up to `AIGEN["THROTTLE_LEASE"]` (16) to the shared counter and
the worker allows that many of the caller's next requests from its memory,
with no round trip and no hop off the event loop. A block is at most an
eighth of what the window has left (the first count of a window in a worker
is a single one), so near the limit every request is counted alone. Every
request allowed was counted before it was allowed: the count across workers
never falls behind. A worker counts a window one round trip at a time, so its
calls that miss the block together share the next one and none of them is
refused while the worker holds counts. A block's unused counts go back with
the worker's next count of that window once the block is a second old; until
then (and for good if that worker never counts the window again) they count as
used, so a caller can be refused up to an eighth of the room early by another
worker's block. `THROTTLE_LEASE` 0 counts every request.

On the event loop (`aallow`) a block is topped up ahead: the call that takes
it down to a quarter of `THROTTLE_LEASE` starts the next count in a thread
(`_topped_up`: the same round trip, the same size rule, under the same
counting lock) and goes on; the calls after it take what is left meanwhile,
and the count adds to the block when it comes. A worker's calls then wait for
a round trip only for a window's first two counts, or when a block ran out
before its top-up came. Measured at 100 requests a second on two workers, one
call in fifteen had waited for its count in a thread, which on this
machine's sleeping cores took 1-3 ms: most of the calls past p93.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from asgiref.sync import sync_to_async
from django.core.cache import cache as default_cache
from rest_framework.settings import api_settings
from rest_framework.throttling import SimpleRateThrottle

from aigen.conf import aigen_settings
from aigen.generation.quotas import ThrottleWindow

logger = logging.getLogger(__name__)

#: A block holds at most this share of what the window has left.
LEASE_SHARE = 8
#: Seconds a block is used; its unused counts go back with the next count after.
LEASE_SECONDS = 1.0
#: Locks a worker's round trips are serialized by (per key, striped).
COUNTING_STRIPES = 64
#: Blocks a worker keeps (one per caller and window); past it, the spent and old ones go (all, if
#: that many are live).
LEASES_MAX = 4096


@dataclass
class _Lease:
    left: int  # requests this worker may still allow from it
    until: float  # time.monotonic() after which it is given back
    total: int  # the window's count when it was granted (sizes the next one)
    topping: bool = False  # a count that adds to it is on its way (`WindowLeases.running_low`)


class WindowLeases:
    """A worker's blocks of fixed-window counts, by window key (thread-safe)."""

    def __init__(self) -> None:
        self._held: dict[str, _Lease] = {}
        self._lock = threading.Lock()
        # A worker counts a window one round trip at a time (striped by key, a bounded set):
        # calls that miss the block together wait for one count and share its block, so no
        # count this worker took goes unused while it refuses one of its own calls.
        self._counting = [threading.Lock() for _ in range(COUNTING_STRIPES)]

    def counting(self, key: str) -> threading.Lock:
        """Held (off the event loop) around one round trip on `key`."""
        return self._counting[hash(key) % COUNTING_STRIPES]

    def take(self, key: str) -> bool:
        """One request allowed from the block held for `key` (no round trip)."""
        lease = self._held.get(key)
        if lease is None or lease.left <= 0 or lease.until <= time.monotonic():
            return False
        with self._lock:
            if lease.left <= 0:
                return False
            lease.left -= 1
            return True

    def running_low(self, key: str) -> bool:
        """Whether the block held for `key` is down to a quarter of the lease size and nothing adds
        to it yet: the caller then starts a count that does (`top_up_size`, `topped_up`), once."""
        lease = self._held.get(key)
        if lease is None or lease.topping or lease.left > int(aigen_settings.THROTTLE_LEASE) // 4:
            return False
        with self._lock:
            if lease.topping:
                return False
            lease.topping = True
            return True

    def top_up_size(self, key: str, limit: int) -> int:
        """Counts to add to the block held for `key` (0: none; it is gone, or the window is near
        its limit, where every request is counted alone)."""
        lease = self._held.get(key)
        if lease is None:
            return 0
        size = min(int(aigen_settings.THROTTLE_LEASE), (limit - lease.total) // LEASE_SHARE)
        if size < 2:
            lease.topping = False
            return 0
        return size

    def topped_up(self, key: str, total: int, took: int, limit: int) -> None:
        """Add what a top-up count granted (`total`: the count after it) to the block held for
        `key`; counts granted to a block that is gone meanwhile stay counted as used."""
        got = max(0, min(took, limit - (total - took)))
        with self._lock:
            lease = self._held.get(key)
            if lease is None:
                return
            lease.left += got
            lease.total = total
            lease.until = time.monotonic() + LEASE_SECONDS
            lease.topping = False

    def ask(self, key: str, limit: int) -> tuple[int, int]:
        """(counts to take, unused counts to give back) for the next round trip on `key`."""
        with self._lock:
            lease = self._held.pop(key, None)
        size = int(aigen_settings.THROTTLE_LEASE)
        if lease is None or size <= 1:  # a window's first count here: one, and learn the count
            return 1, lease.left if lease is not None else 0
        room = limit - lease.total + lease.left
        return max(1, min(size, room // LEASE_SHARE)), lease.left

    def granted(self, key: str, total: int, took: int, limit: int) -> bool:
        """Keep what the round trip granted (`total`: the count after it); True if this request is allowed."""
        got = max(0, min(took, limit - (total - took)))
        now = time.monotonic()
        with self._lock:
            if len(self._held) >= LEASES_MAX:
                self._held = {k: v for k, v in self._held.items() if v.left > 0 and v.until > now}
                if len(self._held) >= LEASES_MAX:  # that many live at once: drop them all (their
                    self._held = {}                # unused counts stay counted, nothing is allowed twice)
            # `ask` took the key's block out under the same counting lock: none to merge with.
            self._held[key] = _Lease(max(got - 1, 0), now + LEASE_SECONDS, total)
        return got >= 1

    def clear(self) -> None:
        with self._lock:
            self._held.clear()


#: This process's blocks, for every request's throttle.
LEASES = WindowLeases()


class GenerateThrottle(SimpleRateThrottle):
    scope = "generate"
    #: Test seams, as in DRF.
    cache = default_cache
    timer = time.time
    leases = LEASES  # this process's blocks (a test gives each simulated worker its own)

    def get_rate(self) -> str | None:
        return api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)

    def get_cache_key(self, request: Any, view: Any) -> str | None:
        user = getattr(request, "user", None)
        ident = user.pk if user is not None and user.is_authenticated else self.get_ident(request)
        return f"throttle:{self.scope}:{ident}"

    def window(self, request: Any) -> ThrottleWindow | None:
        """This request's window (None: no rate), for a caller whose admission
        script counts it (aigen.generation.quotas) instead of `allow_request`."""
        if self.rate is None:
            return None
        base = self.get_cache_key(request, None)
        if base is None:
            return None
        now = self.timer()
        window = int(now // self.duration)
        self._wait = (window + 1) * self.duration - now
        return ThrottleWindow(f"{base}:{window}", self.num_requests, self.duration + 1, self._wait)

    def allow_request(self, request: Any, view: Any) -> bool:
        window = self.window(request)
        if window is None:
            return True
        return self.leases.take(window.key) or self._counted(window)

    async def aallow(self, request: Any) -> bool:
        """`allow_request` for async code: from the worker's block on the loop;
        a count off the loop, in the shared pool (thread-sensitive would start a
        thread per request: Django's per-request ThreadSensitiveContext)."""
        window = self.window(request)
        if window is None:
            return True
        if self.leases.take(window.key):
            if self.leases.running_low(window.key):  # the next block is counted ahead, off the loop
                asyncio.get_running_loop().run_in_executor(None, self._topped_up, window)
            return True
        return await sync_to_async(self._counted, thread_sensitive=False)(window)

    def _topped_up(self, window: ThrottleWindow) -> None:
        """Count the next block of a block running low and add it (in a thread, while the loop's
        calls go on taking from what is left)."""
        try:
            with self.leases.counting(window.key):
                took = self.leases.top_up_size(window.key, window.limit)
                if took:
                    self.leases.topped_up(window.key, self._count(window.key, took), took, window.limit)
        except Exception:  # the block runs out; the call that finds it empty counts on its own
            logger.warning("throttle: counting %s ahead failed", window.key, exc_info=True)
            lease = self.leases._held.get(window.key)
            if lease is not None:
                lease.topping = False

    def _counted(self, window: ThrottleWindow) -> bool:
        with self.leases.counting(window.key):  # one round trip at a time on this key in this worker
            if self.leases.take(window.key):  # granted to the call counted while this one waited
                return True
            took, back = self.leases.ask(window.key, window.limit)
            return self.leases.granted(window.key, self._count(window.key, took - back), took, window.limit)

    def _count(self, key: str, delta: int) -> int:
        window = getattr(self.cache, "incr_window", None)
        if window is not None:  # the project's cache: one round trip
            return window(key, self.duration + 1, delta=delta)
        try:
            return self.cache.incr(key, delta)
        except ValueError:  # first request of the window
            if self.cache.add(key, delta, timeout=self.duration + 1):
                return delta
            return self.cache.incr(key, delta)  # another request created it meanwhile

    def wait(self) -> float:
        return max(getattr(self, "_wait", 0.0), 0.0)
