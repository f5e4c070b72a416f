"""The Django cache backend: `FallbackCache`, django-redis with a local-memory fallback.

Owns the Django cache API over the engine (`CACHES["default"]` names
`resilience.cache.FallbackCache`), the django-redis extras with local-memory
equivalents (`delete_pattern`, `iter_keys`, `ttl`, `lock`), the counting of
every operation and the `stats()` read. With a Redis URL as LOCATION it
serves from django-redis; when a Redis operation fails with a connection
error or timeout, that operation is answered from local memory instead (the
caller never sees the outage) until the engine finds Redis back. With no
LOCATION it is local memory only.

`clear()` only removes this backend's KEY_PREFIX, never the whole Redis
database. Statistics are counted in process and flushed to one Redis hash in
the background, so counting adds no round trip; `stats()` sums every worker's
counts while Redis is up.

Anyone may call it, through Django's `caches` or `default_cache()`.
"""
from __future__ import annotations

import logging
import secrets
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

from asgiref.sync import sync_to_async
from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache
from django_redis.cache import RedisCache
from redis.exceptions import LockError, LockNotOwnedError

from resilience.cache.engine import NOT_SERVED, OUTAGE_ERRORS, Engine, engine_for
from resilience.cache.stats import stats_fields

logger = logging.getLogger(__name__)

_MISSING = object()


class FallbackLock:
    """A lock on Redis while it serves, on local memory otherwise."""

    def __init__(self, engine: Engine, key: str, kwargs: dict[str, Any]) -> None:
        self._engine = engine
        self._key = key
        self._kwargs = kwargs
        self._held: Any = None

    def acquire(self, blocking: bool | None = None, blocking_timeout: float | None = None) -> bool:
        engine = self._engine

        def on_redis(redis: RedisCache) -> Any:
            # Not thread-local: an async caller takes and releases it from
            # different worker threads (the loop never waits on Redis itself).
            lock = redis.lock(self._key, thread_local=False, **self._kwargs)
            # A token of our own: redis-py's default is uuid1(), measurably slow per call.
            token = secrets.token_hex(16)
            held = lock.acquire(blocking=blocking, blocking_timeout=blocking_timeout, token=token)
            return lock if held else None

        held = engine.on_redis(on_redis)
        if held is not NOT_SERVED:
            self._held = held
            return held is not None
        lock = engine.memory.lock(self._key, **self._kwargs)
        if lock.acquire(blocking=blocking, blocking_timeout=blocking_timeout):
            self._held = lock
            return True
        return False

    def release(self) -> None:
        """Release the lock.

        Raises `LockError` when it was not acquired (or already released) and
        `LockNotOwnedError` (a `LockError`) when it expired before this release:
        the holder outlived its `timeout` and another may have held it since
        (logged: the mutual exclusion was broken). A Redis outage is not raised:
        the Redis lock expires by its own timeout.
        """
        lock, self._held = self._held, None
        if lock is None:
            raise LockError("Cannot release an unlocked lock")
        try:
            lock.release()
        except OUTAGE_ERRORS as err:
            self._engine.fall_back(err)
        except LockNotOwnedError:
            logger.warning("cache: lock %s expired before its holder released it "
                           "(held longer than its timeout)", self._key)
            raise

    def __enter__(self) -> FallbackLock:
        if self.acquire():
            return self
        raise LockError("Unable to acquire lock within the time specified")

    def __exit__(self, *exc: object) -> None:
        self.release()


class FallbackCache(BaseCache):
    """Django cache backend: django-redis, falling back to local memory.

    LOCATION is a Redis URL (empty for local memory only). OPTIONS:
    `PROBE_INTERVAL` (seconds before Redis is retried after a failure, 5),
    `SOCKET_CONNECT_TIMEOUT` / `SOCKET_TIMEOUT` (seconds, 0.25 each),
    `STATS_FLUSH_INTERVAL` (seconds, 1), `MAX_ENTRIES` (local memory, 10000);
    any other option is passed to django-redis.

    On failure: no Redis error reaches the caller; the operation is answered
    from memory. Programming errors (`ValueError` from `incr` of a missing key,
    unpicklable values) are raised as Django's other backends raise them.
    """

    def __init__(self, server: str, params: dict[str, Any]) -> None:
        super().__init__(params)
        self._engine = engine_for(server or "", params)
        self._count = self._engine.counters.count  # the hot path: one attribute less

    # -- introspection -----------------------------------------------------------
    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def shared(self) -> bool:
        """True when entries are visible to every process right now (Redis serves).

        False on plain local memory and while fallen back to it: what is
        written now stays in this process. The question for callers deciding
        whether the cache can coordinate processes (cross-process single
        flight, version keys other workers bump, a near cache in front of it).
        It can change with the next operation; ask each time.
        """
        return self._engine.up

    @property
    def backend_name(self) -> str:
        """`redis` or `memory`: which store serves right now (for statistics)."""
        return "redis" if self.shared else "memory"

    @property
    def in_fallback(self) -> bool:
        """True when Redis is configured but local memory is serving (for statistics)."""
        return self._engine.redis is not None and not self.shared

    @property
    def redis_configured(self) -> bool:
        return self._engine.redis is not None

    # -- async code ----------------------------------------------------------------
    async def _off_loop(self, method: Any, *args: Any) -> Any:
        """One cache call from async code. With Redis configured it runs in the
        shared thread pool: Django's own async methods hop thread-sensitively,
        which under ASGI starts a thread per request (about 0.6 ms of CPU a
        call); on local memory only it runs inline (no I/O to wait for)."""
        if self._engine.redis is None:
            return method(*args)
        return await sync_to_async(method, thread_sensitive=False)(*args)

    async def aget(self, key: str, default: Any = None, version: int | None = None) -> Any:
        return await self._off_loop(self.get, key, default, version)

    async def aset(self, key: str, value: Any, timeout: Any = DEFAULT_TIMEOUT,
                   version: int | None = None) -> None:
        await self._off_loop(self.set, key, value, timeout, version)

    async def aadd(self, key: str, value: Any, timeout: Any = DEFAULT_TIMEOUT,
                   version: int | None = None) -> bool:
        return await self._off_loop(self.add, key, value, timeout, version)

    async def adelete(self, key: str, version: int | None = None) -> bool:
        return await self._off_loop(self.delete, key, version)

    async def aget_many(self, keys: Iterable[str], version: int | None = None) -> dict[str, Any]:
        return await self._off_loop(self.get_many, list(keys), version)

    # -- the Django cache API ------------------------------------------------------
    def get(self, key: str, default: Any = None, version: int | None = None) -> Any:
        value = self._engine.run("get", key, _MISSING, version=version)
        if value is _MISSING:
            self._count(key, "misses")
            return default
        self._count(key, "hits")
        return value

    def set(self, key: str, value: Any, timeout: Any = DEFAULT_TIMEOUT,
            version: int | None = None) -> None:
        self._engine.run("set", key, value, timeout=timeout, version=version)
        self._count(key, "sets")

    def add(self, key: str, value: Any, timeout: Any = DEFAULT_TIMEOUT,
            version: int | None = None) -> bool:
        added = self._engine.run("add", key, value, timeout=timeout, version=version)
        if added:
            self._count(key, "sets")
        return bool(added)

    def touch(self, key: str, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        return bool(self._engine.run("touch", key, timeout=timeout, version=version))

    def delete(self, key: str, version: int | None = None) -> bool:
        deleted = bool(self._engine.run("delete", key, version=version))
        if deleted:
            self._count(key, "deletes")
        return deleted

    def has_key(self, key: str, version: int | None = None) -> bool:
        return bool(self._engine.run("has_key", key, version=version))

    def get_many(self, keys: Iterable[str], version: int | None = None) -> dict[str, Any]:
        keys = list(keys)
        found = self._engine.run("get_many", keys, version=version)
        self._engine.counters.count_lookups(keys, found)
        return found

    def set_many(self, data: dict[str, Any], timeout: Any = DEFAULT_TIMEOUT,
                 version: int | None = None) -> list[str]:
        failed = self._engine.run("set_many", data, timeout=timeout, version=version) or []
        for key in data:
            if key not in failed:
                self._count(key, "sets")
        return list(failed)

    def delete_many(self, keys: Iterable[str], version: int | None = None) -> None:
        keys = list(keys)
        if not keys:
            return
        self._engine.run("delete_many", keys, version=version)
        for key in keys:
            self._count(key, "deletes")

    def incr(self, key: str, delta: int = 1, version: int | None = None) -> int:
        return self._engine.run("incr", key, delta=delta, version=version)

    def incr_window(self, key: str, timeout: int, version: int | None = None, delta: int = 1) -> int:
        """Add `delta` (1 unless told) to a counter that lives `timeout` seconds
        from its first increment and return the new count (rate limits' fixed
        windows; a negative delta gives counts back).

        One round trip on Redis, no script: INCRBY then EXPIRE NX, pipelined.
        (django-redis's `incr` runs a Lua script that first checks the key
        exists, and a first increment needs a second call to `add` it.)
        """
        def on_redis(redis: RedisCache) -> int:
            made = redis.client.make_key(key, version=version)
            pipe = redis.client.get_client(write=True).pipeline(transaction=False)
            pipe.incrby(made, delta)
            pipe.expire(made, int(timeout), nx=True)
            return int(pipe.execute()[0])

        counted = self._engine.on_redis(on_redis)
        if counted is not NOT_SERVED:
            return counted
        memory = self._engine.memory
        if memory.add(key, delta, timeout=timeout, version=version):
            return delta
        try:
            return memory.incr(key, delta, version=version)
        except ValueError:  # expired between the two calls: a new window
            memory.set(key, delta, timeout=timeout, version=version)
            return delta

    def decr(self, key: str, delta: int = 1, version: int | None = None) -> int:
        return self._engine.run("decr", key, delta=delta, version=version)

    def clear(self) -> None:
        """Remove every key under this backend's KEY_PREFIX (never FLUSHDB)."""
        self.delete_pattern("*")
        self._engine.memory.clear()

    def close(self, **kwargs: Any) -> None:
        if self._engine.redis is not None:
            try:
                self._engine.redis.close(**kwargs)
            except OUTAGE_ERRORS:
                pass  # closing connections to a Redis that is gone: nothing to close

    # -- django-redis extras with local-memory equivalents -------------------------
    def delete_pattern(self, pattern: str, version: int | None = None) -> int:
        """Delete keys matching a glob (`ai:*`) under this prefix; returns the count."""
        count = int(self._engine.run("delete_pattern", pattern, version=version) or 0)
        if count:
            self._count(pattern, "deletes", count)
        return count

    def iter_keys(self, pattern: str, version: int | None = None) -> Iterator[str]:
        """Yield user keys matching a glob. An outage mid-scan ends on memory."""
        engine = self._engine
        keys = engine.on_redis(lambda redis: list(redis.iter_keys(pattern, version=version)))
        yield from engine.memory.iter_keys(pattern, version=version) if keys is NOT_SERVED else keys

    def ttl(self, key: str, version: int | None = None) -> int | None:
        """Seconds to live; None for no expiry; 0 when the key is missing."""
        return self._engine.run("ttl", key, version=version)

    def lock(self, key: str, timeout: float | None = None, sleep: float = 0.05,
             blocking: bool = True, blocking_timeout: float | None = None) -> FallbackLock:
        """A lock shared by all processes while Redis serves, per process otherwise."""
        return FallbackLock(self._engine, key, {
            "timeout": timeout, "sleep": sleep, "blocking": blocking,
            "blocking_timeout": blocking_timeout,
        })

    # -- statistics ---------------------------------------------------------------
    def stats(self, namespace: str | None = None) -> dict[str, Any]:
        """Counts for all workers (Redis up) or this process (memory), per field.

        `namespace` limits hits/misses/sets/deletes to one namespace; errors and
        fallbacks are backend-wide.
        """
        engine = self._engine
        engine.flush_counts()
        shared = engine.shared_counts()
        counts = Counter(shared or {})
        counts.update(engine.counters.snapshot())  # not yet flushed (or Redis is down)
        return {
            **stats_fields(counts, namespace),
            "backend": self.backend_name,
            "redis_configured": self.redis_configured,
            "fallback": self.in_fallback,
            "scope": "all workers" if shared is not None else "this process",
        }

    def reset_stats(self) -> None:
        self._engine.reset_counts()
