"""The engine: which store serves one cache configuration, Redis or local memory.

Owns the process-wide state of a configuration (the django-redis and
local-memory stores, whether Redis is up, the probe timer, the statistics
counters and their flusher) and the one decision every operation goes
through, `Engine.on_redis()`: an outage (`OUTAGE_ERRORS`) falls back to memory
and leaves Redis alone for `PROBE_INTERVAL` seconds; the next operation after
that probes Redis and, when it works, the engine is back on Redis. Each switch
is logged once.

Django creates one backend instance per thread, so engines are shared: one per
configuration, from `engine_for()`. Callers: `FallbackCache` and its lock
(operations), the registry (`engines_forget`, fork and exit hooks). Everyone
else goes through the backend.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, ClassVar

from django_redis.cache import RedisCache
from django_redis.exceptions import ConnectionInterrupted
from django_redis.pool import ConnectionFactory
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from resilience.cache import deadline
from resilience.cache.local import LocalMemoryCache
from resilience.cache.stats import Counters, Flusher, counts_delete, counts_read, counts_write

# The switch lines are the package's public log ("resilience.cache"), wherever
# in the package the switch is made.
logger = logging.getLogger("resilience.cache")

# What counts as "Redis is unavailable". django-redis wraps most of these in
# ConnectionInterrupted; lock and scan paths can raise the raw redis errors.
OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionInterrupted,
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
)

class OwnPools(ConnectionFactory):
    """django-redis's connection factory with pools of the engines' own.

    django-redis keeps one process-wide pool per URL for every cache: another
    django-redis cache on the same URL (a benchmark's plain one, a second
    cache in settings) shares whichever pool was made first, with its parser
    and socket timeouts. The engine's short timeouts and reply deadline are
    what tell an outage, so its pools are keyed by every connection
    parameter and kept apart from other caches'."""

    _pools: ClassVar[dict[str, Any]] = {}

    def get_or_create_connection_pool(self, params: dict[str, Any]) -> Any:
        key = repr(sorted(params.items()))
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = self.get_connection_pool(params)
        return pool


NO, UP, PROBE = 0, 1, 2  # Engine.redis_mode()
NOT_SERVED = object()  # Engine.on_redis(): Redis did not (or could not) answer


class Engine:
    """Process-wide state for one cache configuration (see module docstring).

    `clock` is the monotonic clock the probe interval is measured on (a test
    seam: move it instead of sleeping).
    """

    clock: ClassVar[Callable[[], float]] = staticmethod(time.monotonic)

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
                # A whole reply within SOCKET_TIMEOUT, not each read (a trickle never times out).
                "CONNECTION_POOL_KWARGS": deadline.pool_kwargs(),
                "CONNECTION_FACTORY": f"{OwnPools.__module__}.{OwnPools.__qualname__}",
                **options,
            }
            self.redis = RedisCache(server, {**params, "OPTIONS": redis_options})
        # While `up`, Redis serves. While down, Redis is retried at `retry_at`.
        self.up = self.redis is not None
        self.retry_at = 0.0
        self.lock = threading.Lock()
        self.counters = Counters()
        self._flusher: Flusher | None = None
        # Which store serves is announced once by a starting server
        # (project.startup.announce), not before every command's output.
        if self.redis is None:
            logger.debug("cache: local memory (no REDIS_URL set)")
        else:
            logger.debug("cache: redis at %s, local-memory fallback", _redact(server))
            self._flusher = Flusher(self, "flush_counts", self.flush_interval)

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
        now = self.clock()
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
        self.counters.count_backend("errors")
        with self.lock:
            self.retry_at = self.clock() + self.probe_interval
            if not self.up:
                return
            self.up = False
        self.counters.count_backend("fallbacks")
        # Every worker falls back on its own: its pid says which one this is.
        logger.warning("cache: redis unavailable (%s), worker %d serving from its local memory; "
                       "retrying redis in %.1fs", _describe(err), os.getpid(), self.probe_interval)

    def recovered(self) -> None:
        with self.lock:
            if self.up:
                return
            self.up = True
        # Entries written during the outage may be stale against Redis; start
        # the next outage from an empty memory store rather than resurrect them.
        self.memory.clear()
        logger.info("cache: redis is back, worker %d serving from redis again", os.getpid())

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
        """Run cache method `op` on Redis when usable, else (or on outage) memory.

        While Redis is up (every operation but the probes and the fallen-back
        ones) this is `on_redis` inlined: no closure, no mode to compute. It is
        every cache operation's path, measured by bench.bench_cache.
        """
        if self.up:
            try:
                return getattr(self.redis, op)(*args, **kwargs)
            except OUTAGE_ERRORS as err:
                self.fall_back(err)
                return getattr(self.memory, op)(*args, **kwargs)
        result = self.on_redis(lambda redis: getattr(redis, op)(*args, **kwargs))
        return getattr(self.memory, op)(*args, **kwargs) if result is NOT_SERVED else result

    # -- statistics --------------------------------------------------------------
    def flush_counts(self) -> bool:
        """Add this process's pending counts to the shared Redis hash.

        Only while Redis is up (a flush never probes). On an outage the counts
        are kept for the next flush and the engine falls back.
        """
        if self.redis is None or not self.up:
            return False
        pending = self.counters.take()
        if not pending:
            return True
        try:
            counts_write(self.redis, pending)
            return True
        except OUTAGE_ERRORS as err:
            self.counters.give_back(pending)  # nothing lost: retried on the next flush
            self.fall_back(err)
            return False

    def shared_counts(self) -> Counter[str] | None:
        """Every worker's flushed counts, or None when Redis cannot answer."""
        counts = self.on_redis(counts_read)
        return None if counts is NOT_SERVED else counts

    def reset_counts(self) -> None:
        self.counters.take()
        self.on_redis(counts_delete)

    # -- lifecycle -----------------------------------------------------------------
    def after_fork(self) -> None:
        # A forked worker inherits the parent's state but not its threads.
        self.counters.after_fork()
        self.lock = threading.Lock()
        if self.redis is not None:
            self._flusher = Flusher(self, "flush_counts", self.flush_interval)

    def stop(self) -> None:
        """Stop the background flusher (the engine is being forgotten)."""
        if self._flusher is not None:
            self._flusher.stop()

    def close(self) -> None:
        """Stop flushing in the background and flush what is pending (at exit)."""
        self.stop()
        self.flush_counts()


_engines: dict[tuple, Engine] = {}
_engines_lock = threading.Lock()


def engine_for(server: str, params: dict[str, Any]) -> Engine:
    """The one engine of this process for a configuration (LOCATION, KEY_PREFIX, OPTIONS)."""
    key = (server, params.get("KEY_PREFIX", ""), repr(sorted((params.get("OPTIONS") or {}).items())))
    engine = _engines.get(key)
    if engine is None:
        with _engines_lock:
            engine = _engines.get(key)
            if engine is None:
                engine = _engines[key] = Engine(server, params)
    return engine


def engines_all() -> list[Engine]:
    """Every engine of this process (for the exit and fork hooks)."""
    return list(_engines.values())


def engines_forget() -> None:
    """Stop and forget every engine: the next `engine_for()` builds a new one."""
    with _engines_lock:
        for engine in _engines.values():
            engine.stop()
        _engines.clear()


def _redact(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return f"{scheme}{sep}{rest}"


def _describe(err: BaseException) -> str:
    cause = err.__cause__ or err
    return f"{type(cause).__name__}: {cause}"
