"""Distributed exclusive locks: `lock(name)` as a context manager or a decorator.

    with lock("schedule:probes", timeout=30, blocking_timeout=0):
        ...
    @lock("nightly-report")
    def report(): ...

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
ever assumed held. A watchdog that cannot extend logs once and stops; the
holder finds out at `release()` (which then returns False).
"""
from __future__ import annotations

import functools
import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import connection

from resilience.exceptions import AppError

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
    return "postgresql" if connection.vendor == "postgresql" else "local"


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
    - `backend`: force "redis", "postgresql" or "local" (default: `lock_backend()`).
    """

    poll = 0.05

    def __init__(self, name: str, *, timeout: float = 30.0, blocking_timeout: float = 10.0,
                 extend: bool = True, backend: str | None = None) -> None:
        self.name = name
        self.timeout = timeout
        self.blocking_timeout = blocking_timeout
        self.extend = extend
        self.backend = backend or lock_backend()
        self.token = uuid.uuid4().hex
        self._redis_lock: Any = None
        self._watchdog: threading.Thread | None = None
        self._stop = threading.Event()
        self.held = False

    # -- acquire / release ---------------------------------------------------
    def acquire(self) -> bool:
        give_up = time.monotonic() + self.blocking_timeout
        if self.backend == "redis":
            self._redis_lock = _redis(settings.REDIS_URL).lock(
                f"{settings.CACHE_KEY_PREFIX}:lock:{self.name}", timeout=self.timeout,
                sleep=self.poll, thread_local=False)
            got = self._redis_lock.acquire(blocking=self.blocking_timeout > 0,
                                           blocking_timeout=self.blocking_timeout or None,
                                           token=self.token.encode())
        else:
            while True:
                got = self._try()
                if got or time.monotonic() >= give_up:
                    break
                time.sleep(self.poll)
        self.held = bool(got)
        if self.held and self.extend and self.backend != "postgresql":
            self._stop.clear()
            self._watchdog = threading.Thread(target=self._keep, name=f"lock:{self.name}", daemon=True)
            self._watchdog.start()
        return self.held

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


def lock(name: str, **options: Any) -> _LockFactory:
    """A lock named `name`, usable as `with lock(...)` or `@lock(...)`; see `Lock`."""
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

    def __call__(self, func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def locked(*args: Any, **kwargs: Any) -> Any:
            with Lock(self.name, **self.options):
                return func(*args, **kwargs)

        return locked
