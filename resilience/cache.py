"""The project's cache backend: django-redis with a local-memory fallback.

`FallbackCache` is used as `CACHES["default"]`. With a Redis URL as LOCATION it
serves from django-redis; when a Redis operation fails with a connection error
or timeout, that operation is answered from local memory instead (the caller
never sees the outage) and Redis is left alone until `PROBE_INTERVAL` seconds
have passed; the next operation after that probes Redis and, when it works,
the backend is back on Redis. Each switch is logged once. With no LOCATION it is
local memory only.

Django creates one backend instance per thread, so everything that must be
process-wide (which engine serves, the probe timer, the statistics, the Redis
and memory stores themselves) lives in one `_Engine` per configuration, kept in
a small registry (`reset_engines()` for tests).

Keys are namespaced (`ai:...`, `http:...`): the namespace is the part before
the first colon, statistics are counted per namespace, and pattern operations
(`delete_pattern`, `iter_keys`) let one namespace be cleared without touching
another, or other applications' keys under another KEY_PREFIX. `clear()` only
removes this backend's prefix, never the whole Redis database.

Statistics are counted in process and flushed to one Redis hash in the
background (`STATS_FLUSH_INTERVAL`), so counting adds no round trip to any
operation; `stats()` sums every worker's counts while Redis is up.
"""
from __future__ import annotations

import atexit
import fnmatch
import logging
import os
import pickle
import threading
import time
import uuid
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache
from django.core.cache.backends.locmem import LocMemCache
from django.core.signals import setting_changed
from django_redis.cache import RedisCache
from django_redis.exceptions import ConnectionInterrupted
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import LockError
from redis.exceptions import TimeoutError as RedisTimeoutError

logger = logging.getLogger(__name__)

#: Known key namespaces. Keys outside them are counted under "other".
NAMESPACES: frozenset[str] = frozenset(
    {"ai", "http", "breaker", "flight", "stats", "policy", "calls", "throttle", "misc"}
)

# What counts as "Redis is unavailable". django-redis wraps most of these in
# ConnectionInterrupted; lock and scan paths can raise the raw redis errors.
OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionInterrupted,
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
)

_MISSING = object()
NO, UP, PROBE = 0, 1, 2  # Engine.redis_mode()
NOT_SERVED = object()  # Engine.on_redis(): Redis did not (or could not) answer
STAT_FIELDS = ("hits", "misses", "sets", "deletes", "errors", "fallbacks")


def cache_key(namespace: str, *parts: object) -> str:
    """Build a namespaced key: `cache_key("http", "github", digest)` -> `http:github:<digest>`."""
    if namespace not in NAMESPACES:
        raise ValueError(f"unknown cache namespace {namespace!r}; known: {sorted(NAMESPACES)}")
    return ":".join([namespace, *(str(p) for p in parts)])


def _namespace_of(key: str) -> str:
    ns = key.partition(":")[0]
    return ns if ns in NAMESPACES else "other"


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
            if self.token is None or held is None or held[0] != self.token:
                raise LockError("Cannot release a lock that's no longer owned")
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


class _Engine:
    """Process-wide state for one cache configuration (see module docstring)."""

    def __init__(self, server: str, params: dict[str, Any]) -> None:
        options = dict(params.get("OPTIONS") or {})
        self.probe_interval = float(options.pop("PROBE_INTERVAL", 5.0))
        self.flush_interval = float(options.pop("STATS_FLUSH_INTERVAL", 1.0))
        connect_timeout = float(options.pop("SOCKET_CONNECT_TIMEOUT", 0.25))
        socket_timeout = float(options.pop("SOCKET_TIMEOUT", 0.25))
        max_entries = options.pop("MAX_ENTRIES", 10000)
        self.prefix = params.get("KEY_PREFIX", "")

        memory_params = {k: v for k, v in params.items() if k != "OPTIONS"}
        memory_params["OPTIONS"] = {"MAX_ENTRIES": max_entries}
        self.memory = LocalMemoryCache(f"fallback:{server}:{self.prefix}:{id(self)}", memory_params)

        self.redis: RedisCache | None = None
        if server:
            redis_options = {
                "SOCKET_CONNECT_TIMEOUT": connect_timeout,
                "SOCKET_TIMEOUT": socket_timeout,
                "IGNORE_EXCEPTIONS": False,
                **options,
            }
            self.redis = RedisCache(server, {**params, "OPTIONS": redis_options})
        # While `up`, Redis serves. While down, Redis is retried at `retry_at`.
        self.up = self.redis is not None
        self.retry_at = 0.0
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.stats_key = "stats:cache"
        self._flusher: threading.Thread | None = None
        self._stop = threading.Event()
        if self.redis is None:
            logger.info("cache: local memory (no REDIS_URL set)")
        else:
            logger.info("cache: redis at %s, local-memory fallback", _redact(server))
            self._start_flusher()

    # -- which store serves --------------------------------------------------
    def redis_mode(self) -> int:
        """Whether the next operation goes to Redis: NO, UP, or PROBE.

        While down, exactly one caller per probe interval is let through to
        probe Redis with its own operation (PROBE); everyone else stays on
        memory. Only a successful PROBE declares Redis back: an operation that
        started before an outage and finished after it proves nothing.
        """
        if self.up:
            return UP
        if self.redis is None:
            return NO
        now = time.monotonic()
        if now < self.retry_at:
            return NO
        with self.lock:
            if self.up:
                return UP
            if now < self.retry_at:
                return NO
            self.retry_at = now + self.probe_interval
            return PROBE

    def fall_back(self, err: BaseException) -> None:
        with self.lock:
            self.counts["all:errors"] += 1
            self.retry_at = time.monotonic() + self.probe_interval
            if not self.up:
                return
            self.up = False
            self.counts["all:fallbacks"] += 1
        logger.warning("cache: redis unavailable (%s), serving from local memory; "
                       "retrying redis in %.1fs", _describe(err), self.probe_interval)

    def recovered(self) -> None:
        with self.lock:
            if self.up:
                return
            self.up = True
        # Entries written during the outage may be stale against Redis; start
        # the next outage from an empty memory store rather than resurrect them.
        self.memory.clear()
        logger.info("cache: redis is back, serving from redis again")

    def on_redis(self, fn: Callable[[RedisCache], Any]) -> Any:
        """`fn(redis)` when Redis should serve, else `NOT_SERVED`.

        The one place that decides: an outage falls back (and `NOT_SERVED`
        tells the caller to use memory); a successful probe declares Redis back.
        """
        mode = self.redis_mode() if self.redis is not None else NO
        if not mode:
            return NOT_SERVED
        try:
            result = fn(self.redis)  # type: ignore[arg-type]
        except OUTAGE_ERRORS as err:
            self.fall_back(err)
            return NOT_SERVED
        if mode == PROBE:
            self.recovered()
        return result

    def run(self, op: str, *args: Any, **kwargs: Any) -> Any:
        """Run cache method `op` on Redis when usable, else (or on outage) memory."""
        result = self.on_redis(lambda redis: getattr(redis, op)(*args, **kwargs))
        return getattr(self.memory, op)(*args, **kwargs) if result is NOT_SERVED else result

    # -- statistics --------------------------------------------------------------
    def count(self, key: str, field: str, n: int = 1) -> None:
        name = f"{_namespace_of(key)}:{field}"
        with self.lock:
            self.counts[name] += n

    def count_lookups(self, keys: list[str], found: dict[str, Any]) -> None:
        names = [f"{_namespace_of(key)}:{'hits' if key in found else 'misses'}" for key in keys]
        with self.lock:
            for name in names:
                self.counts[name] += 1

    def take_counts(self) -> Counter[str]:
        with self.lock:
            taken, self.counts = self.counts, Counter()
        return taken

    def pending_counts(self) -> Counter[str]:
        """A copy of the counts not yet flushed: other threads keep counting
        (and the flusher swaps the counter) while the caller reads it."""
        with self.lock:
            return Counter(self.counts)

    def flush_counts(self) -> bool:
        """Add this process's pending counts to the shared Redis hash."""
        if self.redis is None or not self.up:
            return False
        pending = self.take_counts()
        if not pending:
            return True
        try:
            client = self.redis.client.get_client(write=True)
            pipe = client.pipeline(transaction=False)
            hkey = self.redis.make_key(self.stats_key)
            for field, n in pending.items():
                pipe.hincrby(hkey, field, n)
            pipe.execute()
            return True
        except OUTAGE_ERRORS as err:
            with self.lock:
                self.counts.update(pending)  # nothing lost: retried on the next flush
            self.fall_back(err)
            return False

    def shared_counts(self) -> Counter[str] | None:
        """Every worker's flushed counts, or None when Redis cannot answer."""
        raw = self.on_redis(lambda redis: redis.client.get_client(write=False).hgetall(
            redis.make_key(self.stats_key)))
        if raw is NOT_SERVED:
            return None
        return Counter({k.decode(): int(v) for k, v in raw.items()})

    def reset_counts(self) -> None:
        self.take_counts()
        self.on_redis(lambda redis: redis.client.get_client(write=True).delete(
            redis.make_key(self.stats_key)))

    def _start_flusher(self) -> None:
        ref = weakref.ref(self)
        stop = self._stop
        interval = self.flush_interval

        def loop() -> None:
            while not stop.wait(interval):
                engine = ref()
                if engine is None:
                    return
                engine.flush_counts()
                del engine

        self._flusher = threading.Thread(target=loop, name="cache-stats-flusher", daemon=True)
        self._flusher.start()

    def after_fork(self) -> None:
        # A forked worker inherits the parent's pending counts (already the
        # parent's to flush) but not its thread.
        self.counts = Counter()
        self.lock = threading.Lock()
        self._stop = threading.Event()
        if self.redis is not None:
            self._start_flusher()

    def close(self) -> None:
        self._stop.set()
        self.flush_counts()


_engines: dict[tuple, _Engine] = {}
_engines_lock = threading.Lock()


def _engine_for(server: str, params: dict[str, Any]) -> _Engine:
    key = (server, params.get("KEY_PREFIX", ""), repr(sorted((params.get("OPTIONS") or {}).items())))
    engine = _engines.get(key)
    if engine is None:
        with _engines_lock:
            engine = _engines.get(key)
            if engine is None:
                engine = _engines[key] = _Engine(server, params)
    return engine


_shared_default: FallbackCache | None = None


def default_cache() -> BaseCache:
    """The default cache for hot paths: one shared instance when it is a
    FallbackCache (thread-safe: all its state is in the process-wide engine),
    skipping the per-thread lookup behind `django.core.cache.cache`; Django's
    per-thread instance for any other backend."""
    global _shared_default
    shared = _shared_default
    if shared is not None:
        return shared
    from django.core.cache import caches

    backend = caches["default"]
    if isinstance(backend, FallbackCache):
        _shared_default = backend
    return backend


def _forget_default(*, setting: str = "CACHES", **kwargs: Any) -> None:
    global _shared_default
    if setting == "CACHES":
        _shared_default = None


def reset_engines() -> None:
    """Forget every engine (tests): the next backend instance starts fresh.

    Django keeps one backend instance per thread, each bound to its engine, so
    those instances are dropped too (as Django's own tests do when CACHES
    changes); otherwise one thread would keep a forgotten engine.
    """
    from asgiref.local import Local
    from django.core.cache import caches

    with _engines_lock:
        for engine in _engines.values():
            engine._stop.set()
        _engines.clear()
        caches._connections = Local()
        _forget_default()


def _flush_all_at_exit() -> None:
    for engine in list(_engines.values()):
        engine.close()


def _after_fork_in_child() -> None:
    for engine in list(_engines.values()):
        engine.after_fork()


atexit.register(_flush_all_at_exit)
setting_changed.connect(_forget_default)
os.register_at_fork(after_in_child=_after_fork_in_child)


def _redact(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return f"{scheme}{sep}{rest}"


def _describe(err: BaseException) -> str:
    cause = err.__cause__ or err
    return f"{type(cause).__name__}: {cause}"


class _FallbackLock:
    """A lock on Redis while it serves, on local memory otherwise."""

    def __init__(self, engine: _Engine, key: str, kwargs: dict[str, Any]) -> None:
        self._engine = engine
        self._key = key
        self._kwargs = kwargs
        self._held: Any = None

    def acquire(self, blocking: bool | None = None, blocking_timeout: float | None = None) -> bool:
        engine = self._engine

        def on_redis(redis: RedisCache) -> Any:
            lock = redis.lock(self._key, **self._kwargs)
            return lock if lock.acquire(blocking=blocking, blocking_timeout=blocking_timeout) else None

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
        lock, self._held = self._held, None
        if lock is None:
            raise LockError("Cannot release an unlocked lock")
        try:
            lock.release()
        except OUTAGE_ERRORS as err:
            # The Redis lock expires by its own timeout.
            self._engine.fall_back(err)

    def __enter__(self) -> _FallbackLock:
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
        self._engine = _engine_for(server or "", params)

    # -- introspection -----------------------------------------------------------
    @property
    def engine(self) -> _Engine:
        return self._engine

    @property
    def backend_name(self) -> str:
        """`redis` or `memory`: which store serves right now."""
        return "redis" if self._engine.up else "memory"

    @property
    def in_fallback(self) -> bool:
        """True when Redis is configured but local memory is serving."""
        return self._engine.redis is not None and not self._engine.up

    @property
    def redis_configured(self) -> bool:
        return self._engine.redis is not None

    # -- the Django cache API ------------------------------------------------------
    def get(self, key: str, default: Any = None, version: int | None = None) -> Any:
        value = self._engine.run("get", key, _MISSING, version=version)
        if value is _MISSING:
            self._engine.count(key, "misses")
            return default
        self._engine.count(key, "hits")
        return value

    def set(self, key: str, value: Any, timeout: Any = DEFAULT_TIMEOUT,
            version: int | None = None) -> None:
        self._engine.run("set", key, value, timeout=timeout, version=version)
        self._engine.count(key, "sets")

    def add(self, key: str, value: Any, timeout: Any = DEFAULT_TIMEOUT,
            version: int | None = None) -> bool:
        added = self._engine.run("add", key, value, timeout=timeout, version=version)
        if added:
            self._engine.count(key, "sets")
        return bool(added)

    def touch(self, key: str, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        return bool(self._engine.run("touch", key, timeout=timeout, version=version))

    def delete(self, key: str, version: int | None = None) -> bool:
        deleted = bool(self._engine.run("delete", key, version=version))
        if deleted:
            self._engine.count(key, "deletes")
        return deleted

    def has_key(self, key: str, version: int | None = None) -> bool:
        return bool(self._engine.run("has_key", key, version=version))

    def get_many(self, keys: Iterable[str], version: int | None = None) -> dict[str, Any]:
        keys = list(keys)
        found = self._engine.run("get_many", keys, version=version)
        self._engine.count_lookups(keys, found)
        return found

    def set_many(self, data: dict[str, Any], timeout: Any = DEFAULT_TIMEOUT,
                 version: int | None = None) -> list[str]:
        failed = self._engine.run("set_many", data, timeout=timeout, version=version) or []
        for key in data:
            if key not in failed:
                self._engine.count(key, "sets")
        return list(failed)

    def delete_many(self, keys: Iterable[str], version: int | None = None) -> None:
        keys = list(keys)
        if not keys:
            return
        self._engine.run("delete_many", keys, version=version)
        for key in keys:
            self._engine.count(key, "deletes")

    def incr(self, key: str, delta: int = 1, version: int | None = None) -> int:
        return self._engine.run("incr", key, delta=delta, version=version)

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
                pass

    # -- django-redis extras with local-memory equivalents -------------------------
    def delete_pattern(self, pattern: str, version: int | None = None) -> int:
        """Delete keys matching a glob (`ai:*`) under this prefix; returns the count."""
        count = int(self._engine.run("delete_pattern", pattern, version=version) or 0)
        if count:
            self._engine.count(pattern, "deletes", count)
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
             blocking: bool = True, blocking_timeout: float | None = None) -> _FallbackLock:
        """A lock shared by all processes while Redis serves, per process otherwise."""
        return _FallbackLock(self._engine, key, {
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
        counts.update(engine.pending_counts())  # not yet flushed (or Redis is down)
        fields: dict[str, int] = dict.fromkeys(STAT_FIELDS, 0)
        for name, n in counts.items():
            ns, _, field = name.partition(":")
            if field in ("errors", "fallbacks"):
                fields[field] += n
            elif namespace is None or ns == namespace:
                fields[field] = fields.get(field, 0) + n
        return {
            **fields,
            "backend": self.backend_name,
            "redis_configured": self.redis_configured,
            "fallback": self.in_fallback,
            "scope": "all workers" if shared is not None else "this process",
        }

    def reset_stats(self) -> None:
        self._engine.reset_counts()
