"""Cache statistics: per-namespace counters and the Redis hash they are flushed to.

Owns `Counters`, this process's counts per `<namespace>:<field>` (hits,
misses, sets, deletes; errors and fallbacks under `all:`), updated by any
thread without a Redis round trip; the shared hash every worker adds its
counts to (`counts_write`, `counts_read`, `counts_delete`); the background
`Flusher`; and `stats_fields`, which folds counts into the fields the API
shows.

Callers: the engine (it counts, flushes and decides whether Redis can take a
flush) and `FallbackCache.stats()`. Nothing here decides whether Redis is up:
a Redis error from the hash functions is the caller's to handle.
"""
from __future__ import annotations

import threading
import weakref
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from django_redis.cache import RedisCache

from resilience.cache.keys import namespace_of

STAT_FIELDS = ("hits", "misses", "sets", "deletes", "errors", "fallbacks")
#: Backend-wide fields, counted under the `all:` pseudo-namespace.
BACKEND_FIELDS = ("errors", "fallbacks")
#: The shared hash, under the backend's KEY_PREFIX.
STATS_KEY = "stats:cache"


class Counters:
    """This process's pending counts, safe to update from any thread.

    Every read and write of the underlying `Counter` happens under one lock:
    readers get a copy (`snapshot`) or take the whole counter (`take`), never
    the live dict another thread is adding keys to.
    """

    __slots__ = ("_counts", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def count(self, key: str, field: str, n: int = 1) -> None:
        """Count `n` of `field` under the namespace of `key`."""
        name = f"{namespace_of(key)}:{field}"
        with self._lock:
            counts = self._counts  # dict.get, not Counter's slower item lookup: every operation counts
            counts[name] = counts.get(name, 0) + n

    def count_lookups(self, keys: Iterable[str], found: Mapping[str, Any]) -> None:
        """A hit for each of `keys` in `found`, a miss for the others."""
        names = [f"{namespace_of(key)}:{'hits' if key in found else 'misses'}" for key in keys]
        with self._lock:
            for name in names:
                self._counts[name] += 1

    def count_backend(self, field: str) -> None:
        """Count one backend-wide event (`errors`, `fallbacks`)."""
        with self._lock:
            self._counts[f"all:{field}"] += 1

    def take(self) -> Counter[str]:
        """Everything pending, leaving nothing behind (to be flushed)."""
        with self._lock:
            taken, self._counts = self._counts, Counter()
        return taken

    def give_back(self, pending: Mapping[str, int]) -> None:
        """Return counts a failed flush took, so the next flush retries them."""
        with self._lock:
            self._counts.update(pending)

    def snapshot(self) -> Counter[str]:
        """A copy of what is pending, for reading while other threads count."""
        with self._lock:
            return Counter(self._counts)

    def after_fork(self) -> None:
        # A forked worker inherits the parent's pending counts (the parent's to
        # flush) and maybe a lock some parent thread held at the fork.
        self._lock = threading.Lock()
        self._counts = Counter()


def counts_write(redis: RedisCache, pending: Mapping[str, int]) -> None:
    """Add `pending` to the shared hash in one pipelined round trip."""
    client = redis.client.get_client(write=True)
    pipe = client.pipeline(transaction=False)
    hkey = redis.make_key(STATS_KEY)
    for field, n in pending.items():
        pipe.hincrby(hkey, field, n)
    pipe.execute()


def counts_read(redis: RedisCache) -> Counter[str]:
    """Every worker's flushed counts."""
    raw = redis.client.get_client(write=False).hgetall(redis.make_key(STATS_KEY))
    return Counter({k.decode(): int(v) for k, v in raw.items()})


def counts_delete(redis: RedisCache) -> None:
    redis.client.get_client(write=True).delete(redis.make_key(STATS_KEY))


def stats_fields(counts: Mapping[str, int], namespace: str | None = None) -> dict[str, int]:
    """Fold `<namespace>:<field>` counts into one count per field.

    `namespace` limits hits/misses/sets/deletes to one namespace; errors and
    fallbacks are backend-wide.
    """
    fields: dict[str, int] = dict.fromkeys(STAT_FIELDS, 0)
    for name, n in counts.items():
        ns, _, field = name.partition(":")
        if field in BACKEND_FIELDS:
            fields[field] += n
        elif namespace is None or ns == namespace:
            fields[field] = fields.get(field, 0) + n
    return fields


class Flusher:
    """A daemon thread calling `owner.<method>()` every `interval` seconds.

    Holds its owner weakly, so a forgotten engine is not kept alive by its
    thread; `stop()` ends the loop at its next wake-up.
    """

    def __init__(self, owner: object, method: str, interval: float) -> None:
        self._stop = threading.Event()
        ref = weakref.ref(owner)
        stop = self._stop

        def loop() -> None:
            while not stop.wait(interval):
                target = ref()
                if target is None:
                    return
                getattr(target, method)()
                del target  # not kept alive while waiting

        self._thread = threading.Thread(target=loop, name="cache-stats-flusher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
