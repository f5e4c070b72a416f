"""Process-local stand-ins for the django-redis features the project uses.

Owns `LocalMemoryCache` (Django's LocMemCache plus `iter_keys`,
`delete_pattern`, `ttl` and `lock`) and `LocalLock` (redis-py's `Lock`
interface, within one process). The engine serves from them when there is no
Redis or while it is down; nothing else should need them (tests may).
"""
from __future__ import annotations

import fnmatch
import pickle
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

from django.core.cache.backends.locmem import LocMemCache
from redis.exceptions import LockError, LockNotOwnedError


class LocalLock:
    """A process-local lock with the redis-py `Lock` interface and an expiry.

    Stands in for `redis.lock.Lock` while the cache runs on local memory: same
    `acquire(blocking, blocking_timeout)`, `release()`, `locked()` and context
    manager; a holder that never releases loses the lock after `timeout` seconds.
    """

    _registry: dict[str, tuple[str, float]] = {}
    _cond = threading.Condition()

    def __init__(self, name: str, timeout: float | None = None, sleep: float = 0.1,
                 blocking: bool = True, blocking_timeout: float | None = None) -> None:
        self.name = name
        self.timeout = timeout
        self.blocking = blocking
        self.blocking_timeout = blocking_timeout
        self.token: str | None = None

    def _held_by_other(self, now: float) -> bool:
        held = self._registry.get(self.name)
        if held is None:
            return False
        if held[1] <= now:
            del self._registry[self.name]
            return False
        return True

    def acquire(self, blocking: bool | None = None, blocking_timeout: float | None = None,
                token: str | None = None) -> bool:
        blocking = self.blocking if blocking is None else blocking
        wait = self.blocking_timeout if blocking_timeout is None else blocking_timeout
        deadline = None if wait is None else time.monotonic() + wait
        token = token or uuid.uuid4().hex
        with self._cond:
            while True:
                now = time.monotonic()
                if not self._held_by_other(now):
                    expires = now + self.timeout if self.timeout else float("inf")
                    self._registry[self.name] = (token, expires)
                    self.token = token
                    return True
                if not blocking or (deadline is not None and now >= deadline):
                    return False
                held_until = self._registry[self.name][1]
                limits = [held_until - now, 0.05]
                if deadline is not None:
                    limits.append(deadline - now)
                self._cond.wait(max(0.0, min(limits)))

    def release(self) -> None:
        with self._cond:
            held = self._registry.get(self.name)
            if self.token is None:
                raise LockError("Cannot release an unlocked lock")
            if held is None or held[0] != self.token or held[1] <= time.monotonic():
                self.token = None
                raise LockNotOwnedError("Cannot release a lock that's no longer owned")
            del self._registry[self.name]
            self.token = None
            self._cond.notify_all()

    def locked(self) -> bool:
        with self._cond:
            return self._held_by_other(time.monotonic())

    def __enter__(self) -> LocalLock:
        if self.acquire():
            return self
        raise LockError("Unable to acquire lock within the time specified")

    def __exit__(self, *exc: object) -> None:
        self.release()


class LocalMemoryCache(LocMemCache):
    """LocMemCache plus the django-redis extras the project relies on:
    `iter_keys`, `delete_pattern`, `ttl` and `lock`.

    Keys are not checked for memcached compatibility (Django's warning loop
    costs more than the lookup itself, and no memcached is involved).
    """

    def validate_key(self, key: str) -> None:
        return None

    def get_many(self, keys: Iterable[str], version: int | None = None) -> dict[str, Any]:
        """One lock pass for all keys (the breaker reads three per call)."""
        now = time.time()
        pickled: dict[str, bytes] = {}
        with self._lock:
            for key in keys:
                made = self.make_key(key, version=version)
                value = self._cache.get(made)
                if value is None:
                    continue
                expires = self._expire_info.get(made, -1)
                if expires is not None and expires <= now:
                    self._delete(made)
                    continue
                self._cache.move_to_end(made, last=False)
                pickled[key] = value
        return {key: pickle.loads(value) for key, value in pickled.items()}

    def _user_key(self, made_key: str) -> str:
        # The default KEY_FUNCTION is "prefix:version:key".
        return made_key.split(":", 2)[2]

    def _matching(self, pattern: str, version: int | None) -> list[str]:
        made = self.make_key(pattern, version=version)
        now = time.time()
        with self._lock:
            return [k for k in self._cache if fnmatch.fnmatchcase(k, made)
                    and self._live(self._expire_info.get(k, -1), now)]

    @staticmethod
    def _live(expires: float | None, now: float) -> bool:
        return expires is None or expires > now

    def iter_keys(self, search: str, itersize: int | None = None,
                  version: int | None = None) -> Iterator[str]:
        for made in self._matching(search, version):
            yield self._user_key(made)

    def keys(self, search: str, version: int | None = None) -> list[str]:
        return list(self.iter_keys(search, version=version))

    def delete_pattern(self, pattern: str, version: int | None = None, **_: Any) -> int:
        count = 0
        for made in self._matching(pattern, version):
            with self._lock:
                count += bool(self._delete(made))
        return count

    def ttl(self, key: str, version: int | None = None) -> int | None:
        made = self.make_key(key, version=version)
        with self._lock:
            if self._has_expired(made):
                return 0
            expires = self._expire_info.get(made)
        return None if expires is None else max(0, round(expires - time.time()))

    def lock(self, key: str, version: int | None = None, timeout: float | None = None,
             sleep: float = 0.1, blocking: bool = True, blocking_timeout: float | None = None,
             thread_local: bool = True) -> LocalLock:
        return LocalLock(self.make_key(key, version=version), timeout=timeout, sleep=sleep,
                         blocking=blocking, blocking_timeout=blocking_timeout)
