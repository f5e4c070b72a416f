"""Distributed exclusive locks: `lock(name)` as a context manager (`with`
or `async with`) or a decorator (of sync or async functions).

    with lock("schedule:probes", timeout=30, blocking_timeout=0):
        ...
    async with lock("reports:monthly"):
        ...
    @lock("nightly-report")
    def report(): ...
    @lock("user:{user_id}")              # one lock per user: the name is built from the call's arguments
    async def user_sync(*, user_id): ...

A decorator's name may hold `{parameter}` fields, filled from the decorated
call's bound arguments (defaults included); a field that is not a parameter
of the function is refused when decorating (TypeError), not at the first call.
`async with` and async functions acquire and release in a worker thread
(never blocking the event loop); on PostgreSQL both in the same thread, so
the advisory lock is held and freed on one connection.

Counters (`lock_stats()`, and the Prometheus counters
`resilience_lock_events_total{event}` / `resilience_lock_wait_seconds_total`):
`acquired`, `contended` (the first try found it held), `waited` (seconds
spent waiting for locks, summed), `expired` (lost before release: the TTL
ran out or the watchdog could not extend), `not_acquired`, `fallbacks`.
Lock names are never a label (they may carry ids).

Where the lock lives (`lock_backend()`):
- Redis (`REDIS_URL` set): redis-py's `Lock`, a random token per holder so
  only the holder releases, a TTL of `timeout` seconds, and a watchdog thread
  that extends it every `timeout / 3` while held (`extend=True`), so a long
  holder keeps it and a dead one loses it after at most `timeout`.
- PostgreSQL without Redis: a session advisory lock on the thread's database
  connection (`pg_try_advisory_lock`), released by the same connection or
  when that connection ends (a dead process frees it; no TTL needed).
- SQLite without Redis: a process-local lock with the same expiry rule.
  Single host, single process only: it does not exclude other processes.

On failure: not acquiring within `blocking_timeout` raises `LockNotAcquired`
(409) from the context manager and the decorator; `acquire()` returns False.
A Redis error while acquiring propagates (`redis.RedisError`): no lock is
ever assumed held; unless the lock was made with `fallback=True` (the
schedules), which then takes the database's lock instead (PostgreSQL's
advisory lock, or the process-local one on SQLite), logging one warning
when Redis goes and one line when it is back, not one per try. A watchdog
that cannot extend logs once and stops; the holder finds out at `release()`
(which then returns False).
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import logging
import string
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
from redis.exceptions import RedisError

from resilience.exceptions import AppError
from resilience.telemetry.metrics import LOCK_EVENTS, LOCK_WAIT_SECONDS

logger = logging.getLogger(__name__)


class LockNotAcquired(AppError):
    code = "lock_not_acquired"
    status = 409


_redis_clients: dict[str, Any] = {}


def _redis(url: str) -> Any:
    import redis

    if url not in _redis_clients:
        _redis_clients[url] = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
    return _redis_clients[url]


def lock_backend() -> str:
    """"redis", "postgresql" or "local" (see the module docstring)."""
    if settings.REDIS_URL:
        return "redis"
    return database_backend()


def database_backend() -> str:
    """The lock that needs no Redis: "postgresql" (advisory) or "local"."""
    return "postgresql" if connection.vendor == "postgresql" else "local"


class LockStats:
    """This process's lock counters (see the module docstring); thread-safe."""

    EVENTS = ("acquired", "contended", "not_acquired", "expired", "fallbacks")

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._mutex:
            self._counts = dict.fromkeys(self.EVENTS, 0)
            self._waited = 0.0

    def count(self, event: str) -> None:
        with self._mutex:
            self._counts[event] += 1
        LOCK_EVENTS.labels(event).inc()

    def wait(self, seconds: float) -> None:
        with self._mutex:
            self._waited += seconds
        LOCK_WAIT_SECONDS.inc(seconds)

    def snapshot(self) -> dict[str, float]:
        with self._mutex:
            return {**self._counts, "waited": round(self._waited, 6)}


lock_stats_store = LockStats()


def lock_stats() -> dict[str, float]:
    """This process's lock counters: acquired, contended, waited (seconds), expired, ..."""
    return lock_stats_store.snapshot()


class _RedisOutage:
    """Whether the last fallback lock found Redis out: one log line per change."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self.out = False

    def went(self, err: BaseException, name: str) -> None:
        with self._mutex:
            was, self.out = self.out, True
        if not was:
            logger.warning("locks: Redis unreachable (%s) taking lock %s; using the %s lock until it is back",
                           type(err).__name__, name, database_backend())

    def back(self) -> None:
        with self._mutex:
            was, self.out = self.out, False
        if was:
            logger.info("locks: Redis reachable again; locks are on Redis")


redis_outage = _RedisOutage()


class _LocalLocks:
    """Process-local named locks with a TTL; `clock` is a seam for tests."""

    clock = time.monotonic

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._held: dict[str, tuple[str, float]] = {}

    def acquire(self, name: str, token: str, ttl: float) -> bool:
        with self._mutex:
            now = type(self).clock()
            held = self._held.get(name)
            if held is not None and held[1] > now:
                return False
            self._held[name] = (token, now + ttl)
            return True

    def extend(self, name: str, token: str, ttl: float) -> bool:
        with self._mutex:
            held = self._held.get(name)
            if held is None or held[0] != token or held[1] <= type(self).clock():
                return False
            self._held[name] = (token, type(self).clock() + ttl)
            return True

    def release(self, name: str, token: str) -> bool:
        with self._mutex:
            held = self._held.get(name)
            if held is None or held[0] != token:
                return False
            del self._held[name]
            return held[1] > type(self).clock()


local_locks = _LocalLocks()


class Lock:
    """One exclusive lock named `name` (see the module docstring).

    - `timeout`: seconds the lock lives without extension (Redis, local);
    - `blocking_timeout`: seconds to wait for it (0: try once);
    - `extend`: keep extending it while held (a watchdog thread);
    - `backend`: force "redis", "postgresql" or "local" (default: `lock_backend()`);
    - `fallback`: when Redis fails while acquiring, take the database's lock
      instead of raising (see the module docstring).
    """

    poll = 0.05

    def __init__(self, name: str, *, timeout: float = 30.0, blocking_timeout: float = 10.0,
                 extend: bool = True, backend: str | None = None, fallback: bool = False) -> None:
        self.name = name
        self.timeout = timeout
        self.blocking_timeout = blocking_timeout
        self.extend = extend
        self.backend = backend or lock_backend()
        self.fallback = fallback
        self.token = uuid.uuid4().hex
        self._redis_lock: Any = None
        self._watchdog: threading.Thread | None = None
        self._stop = threading.Event()
        self.held = False

    # -- acquire / release ---------------------------------------------------
    def acquire(self) -> bool:
        started = time.monotonic()
        if self.backend == "redis" and self.fallback:
            try:
                got = self._acquire_redis()
            except RedisError as err:
                redis_outage.went(err, self.name)
                lock_stats_store.count("fallbacks")
                self.backend = database_backend()
                got = self._acquire_polling(started)
            else:
                redis_outage.back()
        elif self.backend == "redis":
            got = self._acquire_redis()
        else:
            got = self._acquire_polling(started)
        waited = time.monotonic() - started
        if waited >= self.poll:
            lock_stats_store.wait(waited)
        lock_stats_store.count("acquired" if got else "not_acquired")
        self.held = bool(got)
        if self.held and self.extend and self.backend != "postgresql":
            self._stop.clear()
            self._watchdog = threading.Thread(target=self._keep, name=f"lock:{self.name}", daemon=True)
            self._watchdog.start()
        return self.held

    def _acquire_redis(self) -> bool:
        self._redis_lock = _redis(settings.REDIS_URL).lock(
            f"{settings.CACHE_KEY_PREFIX}:lock:{self.name}", timeout=self.timeout,
            sleep=self.poll, thread_local=False)
        if self._redis_lock.acquire(blocking=False, token=self.token.encode()):
            return True
        lock_stats_store.count("contended")
        if self.blocking_timeout <= 0:
            return False
        return self._redis_lock.acquire(blocking=True, blocking_timeout=self.blocking_timeout,
                                        token=self.token.encode())

    def _acquire_polling(self, started: float) -> bool:
        give_up = started + self.blocking_timeout
        first = True
        while True:
            got = self._try()
            if got or time.monotonic() >= give_up:
                break
            if first:
                lock_stats_store.count("contended")
                first = False
            time.sleep(self.poll)
        if not got and first:
            lock_stats_store.count("contended")
        return got

    def _try(self) -> bool:
        if self.backend == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_try_advisory_lock(%s)", [self._key()])
                return bool(cursor.fetchone()[0])
        return local_locks.acquire(self.name, self.token, self.timeout)

    def _key(self) -> int:
        digest = hashlib.blake2b(self.name.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big", signed=True)

    def extend_now(self) -> bool:
        """Reset the lock's TTL to `timeout` (what the watchdog does); False if
        it is no longer ours."""
        if self.backend == "redis":
            from redis.exceptions import LockError

            try:
                return bool(self._redis_lock.reacquire())
            except LockError:
                return False
        if self.backend == "local":
            return local_locks.extend(self.name, self.token, self.timeout)
        return self.held

    def _keep(self) -> None:
        while not self._stop.wait(self.timeout / 3):
            try:
                ok = self.extend_now()
            except Exception as err:  # Redis down: say it once, stop extending
                logger.warning("lock %s: extension failed (%s); it expires in at most %g s",
                               self.name, err, self.timeout)
                return
            if not ok:
                logger.warning("lock %s: lost before release (expired or taken)", self.name)
                return

    def release(self) -> bool:
        """Release it; False when it was no longer ours (it had expired)."""
        if not self.held:
            return False
        self.held = False
        self._stop.set()
        if self._watchdog is not None:
            self._watchdog.join()
            self._watchdog = None
        released = self._release()
        if not released:
            lock_stats_store.count("expired")
        return released

    def _release(self) -> bool:
        if self.backend == "redis":
            from redis.exceptions import LockError

            try:
                self._redis_lock.release()
            except LockError:
                return False
            return True
        if self.backend == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [self._key()])
                return bool(cursor.fetchone()[0])
        return local_locks.release(self.name, self.token)

    # -- faces -----------------------------------------------------------------
    def __enter__(self) -> Lock:
        if not self.acquire():
            raise LockNotAcquired(f"lock {self.name!r} is held elsewhere", lock=self.name)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _in_thread(self, func: Callable[[], Any]) -> Any:
        # PostgreSQL's advisory lock belongs to a connection, hence to a thread:
        # acquire and release in the one thread sync_to_async keeps for sensitive work.
        return sync_to_async(func, thread_sensitive=self.backend == "postgresql")()

    async def __aenter__(self) -> Lock:
        if not await self._in_thread(self.acquire):
            raise LockNotAcquired(f"lock {self.name!r} is held elsewhere", lock=self.name)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._in_thread(self.release)


def lock(name: str, **options: Any) -> _LockFactory:
    """A lock named `name`, usable as `with lock(...)`, `async with lock(...)`
    or `@lock(...)` (sync or async functions; `{parameter}` fields in the
    name are filled from each call's arguments); see `Lock`."""
    return _LockFactory(name, options)


class _LockFactory:
    """A fresh `Lock` per use, so one decorated function may run in many
    threads (each waiting its turn) and a `with` block gets its own token."""

    def __init__(self, name: str, options: dict[str, Any]) -> None:
        self.name = name
        self.options = options
        self._current: list[Lock] = []

    def __enter__(self) -> Lock:
        held = Lock(self.name, **self.options).__enter__()
        self._current.append(held)
        return held

    def __exit__(self, *exc: object) -> None:
        self._current.pop().release()

    async def __aenter__(self) -> Lock:
        held = await Lock(self.name, **self.options).__aenter__()
        self._current.append(held)
        return held

    async def __aexit__(self, *exc: object) -> None:
        await self._current.pop().__aexit__(*exc)

    def __call__(self, func: Callable[..., Any]) -> Callable[..., Any]:
        name_of = self._namer(func)
        if inspect.iscoroutinefunction(func):
            @functools.wraps(func)
            async def alocked(*args: Any, **kwargs: Any) -> Any:
                async with Lock(name_of(args, kwargs), **self.options):
                    return await func(*args, **kwargs)

            return alocked

        @functools.wraps(func)
        def locked(*args: Any, **kwargs: Any) -> Any:
            with Lock(name_of(args, kwargs), **self.options):
                return func(*args, **kwargs)

        return locked

    def _namer(self, func: Callable[..., Any]) -> Callable[[tuple, dict], str]:
        """The lock's name for one call: fixed, or `{parameter}` fields filled
        from the call's bound arguments."""
        fields = [field for _, field, _, _ in string.Formatter().parse(self.name) if field is not None]
        if not fields:
            return lambda args, kwargs: self.name
        signature = inspect.signature(func)
        unknown = [f for f in fields if f.split(".")[0].split("[")[0] not in signature.parameters]
        if unknown:
            raise TypeError(f"lock name {self.name!r}: {unknown[0]!r} is not a parameter of "
                            f"{func.__qualname__}")

        def name_of(args: tuple, kwargs: dict) -> str:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            return self.name.format(**bound.arguments)

        return name_of
