"""Caller limits and budgets per API token: requests per minute and tokens
per day or month, checked before a call is made.

`quota_admit(user_id=..., limits=..., estimate=...)` admits one call or raises
`QuotaExceeded` (429, `retry_after`); the admitted call holds a `Reservation`
of `estimate` tokens (prompt estimate plus max_tokens) and `quota_settle`
replaces it with what the provider reported. A caller is admitted while its
spent plus reserved tokens are under its budget, so concurrent callers
overshoot by at most the last admitted request's worth.

With Redis serving the shared cache, each admission is one server-side Lua
script (redis-py `register_script`, EVALSHA): the sliding rpm window (a
sorted set of admission times), the period's spent tokens and the live
reservations (a sorted set by expiry and a hash of amounts with their sum)
are read and written inside Redis, atomically, in one round trip; no
read-modify-write from Python, so every worker and host shares one exact
count. A reservation expires after `AIGEN["QUOTA_RESERVATION_SECONDS"]`: a
worker killed mid-call stops holding its caller's budget then. Settling is
one more script, after the answer (only for a token budget). The door's own
throttle (aigen.edge.throttling), a Redis round trip of its own, is counted
by the admission script for a caller with limits (`ThrottleWindow`): the
door of a limited caller makes one round trip before the call, like any other.

Without Redis (or while it is down) the same logic runs in this process's
memory: the limits then hold per process (README, "Caller limits").
A token without limits costs nothing here: no script, no lock.

`quota_check(user_id=..., limits=...)` is the same admission without a
reservation (queued jobs at their door, aigen.generation.tasks): the request
is counted in the minute and refused past the budget, and nothing is held.
"""
from __future__ import annotations

import math
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aigen.conf import aigen_settings
from aigen.exceptions import CallerThrottled, QuotaExceeded
from resilience.cache import default_cache
from resilience.cache.engine import NOT_SERVED

WINDOW = 60.0
#: Expired reservations swept per admission (bounded work per script run).
SWEEP = 100

# KEYS: rpm window, spent tokens of the period, reservations by expiry, reservation amounts,
# the door's throttle window.
# ARGV: now, rpm limit (0: none), budget (0: none), estimate, reservation id, its expiry,
# seconds to the period's end, throttle limit (0: none), its window's lifetime, its wait,
# whether to hold the estimate (0: only check the budget).
# Returns {0} admitted, {1, wait} past the rpm, {2, wait} past the budget, {3, wait} throttled.
ADMIT_LUA = """
local throttle = tonumber(ARGV[8])
if throttle > 0 then
  local count = redis.call('INCR', KEYS[5])
  redis.call('EXPIRE', KEYS[5], ARGV[9], 'NX')
  if count > throttle then return {3, ARGV[10]} end
end
local now = tonumber(ARGV[1])
local rpm, budget, estimate = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local dead = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, SWEEP)
if #dead > 0 then
  local freed = 0
  for _, amount in ipairs(redis.call('HMGET', KEYS[4], unpack(dead))) do
    if amount then freed = freed + tonumber(amount) end
  end
  redis.call('HDEL', KEYS[4], unpack(dead))
  redis.call('ZREM', KEYS[3], unpack(dead))
  redis.call('HINCRBY', KEYS[4], '#sum', -freed)
end
if rpm > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - WINDOW)
  local count = redis.call('ZCARD', KEYS[1])
  if count >= rpm then
    local frees = redis.call('ZRANGE', KEYS[1], count - rpm, count - rpm, 'WITHSCORES')
    return {1, tostring(tonumber(frees[2]) + WINDOW - now)}
  end
end
if budget > 0 then
  local spent = tonumber(redis.call('GET', KEYS[2]) or '0')
  if spent >= budget then return {2, ARGV[7]} end
  local held = tonumber(redis.call('HGET', KEYS[4], '#sum') or '0')
  if spent + held >= budget then return {2, '1'} end
end
if budget > 0 and ARGV[11] ~= '0' then
  redis.call('HSET', KEYS[4], ARGV[5], estimate)
  redis.call('HINCRBY', KEYS[4], '#sum', estimate)
  redis.call('ZADD', KEYS[3], tonumber(ARGV[6]), ARGV[5])
  local ttl = math.ceil(tonumber(ARGV[6]) - now) + 1
  redis.call('EXPIRE', KEYS[3], ttl)
  redis.call('EXPIRE', KEYS[4], ttl)
end
if rpm > 0 then
  redis.call('ZADD', KEYS[1], now, ARGV[5])
  redis.call('EXPIRE', KEYS[1], WINDOW + 1)
end
return {0}
""".replace("SWEEP", str(SWEEP)).replace("WINDOW", str(int(WINDOW)))

# KEYS: spent tokens of the period, reservations by expiry, reservation amounts.
# ARGV: reservation id, tokens used, the spent key's lifetime.
SETTLE_LUA = """
local amount = redis.call('HGET', KEYS[3], ARGV[1])
if amount then
  redis.call('HDEL', KEYS[3], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('HINCRBY', KEYS[3], '#sum', -tonumber(amount))
end
local spent = redis.call('INCRBY', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return spent
"""


@dataclass(frozen=True)
class CallerLimits:
    """A caller's limits (an API token's fields); None = unlimited."""

    rpm: int | None = None
    budget: int | None = None
    period: str = "day"

    @classmethod
    def of(cls, token: Any) -> CallerLimits | None:
        """The limits of an `ApiToken`, or None when it has none (or no token)."""
        if token is None or not (token.rpm_limit or token.token_budget):
            return None
        return cls(rpm=token.rpm_limit, budget=token.token_budget, period=token.budget_period)


@dataclass(frozen=True)
class ThrottleWindow:
    """The door's fixed-window throttle (aigen.edge.throttling) for one
    request: its counter's cache key, limit, lifetime and the seconds until the
    window ends. Counted by the admission script, so a limited caller's door
    makes one Redis round trip, not two."""

    key: str
    limit: int
    ttl: int
    wait: float


@dataclass
class Reservation:
    """An admitted call: settle it once with `quota_settle`."""

    user_id: int
    limits: CallerLimits
    estimate: int
    throttle: ThrottleWindow | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    settled: bool = False
    #: False: only checked (`quota_check`), nothing held.
    hold: bool = True


def period_bounds(period: str, now: float) -> tuple[int, int]:
    """(start, end) epoch seconds of the UTC day or month holding `now`."""
    moment = datetime.fromtimestamp(now, UTC)
    if period == "month":
        start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        following = (start.replace(year=start.year + 1, month=1) if start.month == 12
                     else start.replace(month=start.month + 1))
        return int(start.timestamp()), int(following.timestamp())
    start_day = int(now // 86400) * 86400
    return start_day, start_day + 86400


def _keys(user_id: int, period: str, now: float) -> list[str]:
    start, _ = period_bounds(period, now)
    base = f"quota:{user_id}"
    return [f"{base}:rpm", f"{base}:spent:{period}:{start}", f"{base}:held", f"{base}:held:amounts"]


def _refusal(kind: int, wait: float, limits: CallerLimits) -> QuotaExceeded:
    if kind == 3:
        return CallerThrottled(wait)
    if kind == 1:
        return QuotaExceeded("rate_limit_exceeded",
                             f"Rate limit reached: {limits.rpm} requests per minute for this API token.",
                             retry_after=wait)
    return QuotaExceeded("insufficient_quota",
                         f"Token budget reached: {limits.budget} tokens per {limits.period} "
                         "for this API token.",
                         retry_after=wait)


def _window_count(key: str, ttl: int) -> int:
    """The throttle's count without the script: the cache's own fixed window
    (its memory while Redis is down), as the door counts it."""
    store = default_cache()
    window = getattr(store, "incr_window", None)
    if window is not None:
        return int(window(key, ttl))
    if store.add(key, 1, timeout=ttl):
        return 1
    try:
        return int(store.incr(key))
    except ValueError:  # expired between the two calls: a new window
        store.set(key, 1, timeout=ttl)
        return 1


class MemoryQuotas:
    """The same limits in this process's memory (no Redis): per process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._windows: dict[int, deque[float]] = {}
        self._spent: dict[tuple[int, str, int], int] = {}
        self._held: dict[int, dict[str, tuple[int, float]]] = {}

    def clear(self) -> None:
        with self._lock:
            self._windows.clear()
            self._spent.clear()
            self._held.clear()

    def admit(self, res: Reservation, now: float) -> tuple[int, float]:
        limits = res.limits
        with self._lock:
            held = self._held.setdefault(res.user_id, {})
            for rid in [rid for rid, (_, expiry) in held.items() if expiry <= now]:
                del held[rid]
            window = self._windows.setdefault(res.user_id, deque())
            while window and window[0] <= now - WINDOW:
                window.popleft()
            if limits.rpm and len(window) >= limits.rpm:
                return 1, window[len(window) - limits.rpm] + WINDOW - now
            if limits.budget:
                start, end = period_bounds(limits.period, now)
                spent = self._spent.get((res.user_id, limits.period, start), 0)
                if spent >= limits.budget:
                    return 2, end - now
                if spent + sum(amount for amount, _ in held.values()) >= limits.budget:
                    return 2, 1.0
                if res.hold:
                    held[res.id] = (res.estimate, now + aigen_settings.QUOTA_RESERVATION_SECONDS)
            if limits.rpm:
                window.append(now)
            return 0, 0.0

    def settle(self, res: Reservation, used: int, now: float) -> None:
        start, _ = period_bounds(res.limits.period, now)
        with self._lock:
            self._held.get(res.user_id, {}).pop(res.id, None)
            key = (res.user_id, res.limits.period, start)
            for old in [k for k in self._spent if k[0] == res.user_id and k != key]:
                del self._spent[old]  # a past period: nothing reads it again
            self._spent[key] = self._spent.get(key, 0) + used


class Quotas:
    """Admission and settlement on Redis when it serves, else in memory."""

    #: Test seam: the clock the windows and periods are read from.
    clock = staticmethod(time.time)

    def __init__(self) -> None:
        self.memory = MemoryQuotas()
        self._scripts: dict[str, Any] = {}

    def _script(self, client: Any, name: str, source: str) -> Any:
        """The registered script (its SHA computed once); run it with `client=`, the
        client of the moment (the engine's may be rebuilt)."""
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = client.register_script(source)
        return script

    def _on_redis(self, run: Any) -> Any:
        store = default_cache()
        engine = getattr(store, "engine", None)
        if engine is None or not getattr(store, "shared", False):
            return NOT_SERVED
        return engine.on_redis(lambda redis: run(redis.client.get_client(write=True), redis.client.make_key))

    def admit(self, res: Reservation) -> None:
        now = self.clock()
        limits = res.limits
        _, end = period_bounds(limits.period, now)
        expiry = now + aigen_settings.QUOTA_RESERVATION_SECONDS

        throttle = res.throttle

        def run(client: Any, make_key: Any) -> list[Any]:
            keys = [str(make_key(k)) for k in _keys(res.user_id, limits.period, now)]
            keys.append(str(make_key(throttle.key)) if throttle else keys[0])
            return self._script(client, "admit", ADMIT_LUA)(client=client, keys=keys, args=[
                repr(now), limits.rpm or 0, limits.budget or 0, res.estimate, res.id, repr(expiry),
                max(1, math.ceil(end - now)), throttle.limit if throttle else 0,
                throttle.ttl if throttle else 0, repr(throttle.wait) if throttle else 0, int(res.hold)])

        answer = self._on_redis(run)
        if answer is NOT_SERVED:
            if throttle is not None and _window_count(throttle.key, throttle.ttl) > throttle.limit:
                raise CallerThrottled(throttle.wait)
            kind, wait = self.memory.admit(res, now)
        else:
            kind, wait = int(answer[0]), float(answer[1]) if len(answer) > 1 else 0.0
        if kind:
            raise _refusal(kind, max(wait, 0.001), limits)

    def settle(self, res: Reservation, used: int) -> None:
        if res.settled:
            return
        res.settled = True
        if not res.limits.budget:
            return  # only the rpm window: nothing held, nothing to count
        now = self.clock()
        _, end = period_bounds(res.limits.period, now)

        def run(client: Any, make_key: Any) -> Any:
            _, spent, held, amounts = (str(make_key(k)) for k in _keys(res.user_id, res.limits.period, now))
            lifetime = math.ceil(end - now) + 86400  # the period, and a day to read it back
            return self._script(client, "settle", SETTLE_LUA)(
                client=client, keys=[spent, held, amounts], args=[res.id, int(used), lifetime])

        if self._on_redis(run) is NOT_SERVED:
            self.memory.settle(res, int(used), now)


quotas = Quotas()


def quota_admit(*, user_id: int, limits: CallerLimits, estimate: int,
                throttle: ThrottleWindow | None = None) -> Reservation:
    """Admit one call of `user_id` reserving `estimate` tokens, or raise
    `QuotaExceeded` (see the module docstring); with `throttle`, the door's
    throttle window is counted by the same script first (`CallerThrottled`
    past it). Sync: one Redis round trip."""
    reservation = Reservation(user_id=user_id, limits=limits, estimate=max(1, int(estimate)),
                              throttle=throttle)
    quotas.admit(reservation)
    return reservation


def quota_check(*, user_id: int, limits: CallerLimits) -> None:
    """`quota_admit` without a reservation: one request counted in the
    caller's minute, `QuotaExceeded` past it or past the budget (spent, or
    held by calls in flight); nothing held, nothing to settle."""
    quotas.admit(Reservation(user_id=user_id, limits=limits, estimate=1, hold=False, settled=True))


def quota_settle(reservation: Reservation, *, used: int | None) -> None:
    """Replace `reservation` by the tokens the call used (None: the provider
    reported none, and the estimate is kept as spent). Once; later calls do
    nothing. Sync: a Redis round trip."""
    quotas.settle(reservation, reservation.estimate if used is None else used)
