"""Cache benchmark: get-hit cost of the fallback backend against plain
django-redis and LocMemCache, and the cost of a get while Redis is down.

Targets: wrapper overhead at most 10% over plain django-redis; a get with
Redis down at most twice a LocMemCache get.

The wall-clock ratio includes the Redis round trip and whatever else the box
runs; the process-CPU row (`time.process_time`, this process only: Redis's
own CPU is not in it) is the wrapper's cost where the client spends it, the
steadier figure on a busy machine. Each cache has its own connection pool
(the FallbackCache's are its own: resilience.cache.engine.OwnPools), so the
plain one measures django-redis with its stock parser and the FallbackCache
its reply-deadline parser.
"""
from __future__ import annotations

import os
import socket
import statistics
import time
from collections.abc import Callable

from bench.common import django_setup, fmt_time, paired_ratio, table, verdict


def _dead_redis_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"redis://127.0.0.1:{sock.getsockname()[1]}/0"


def cpu_ratio(contender: Callable[[], object], baseline: Callable[[], object], *, n: int = 300,
              rounds: int = 41) -> tuple[float, float, float]:
    """`paired_ratio` on process CPU time instead of the wall clock."""
    def per_op(fn: Callable[[], object]) -> float:
        start = time.process_time()
        for _ in range(n):
            fn()
        return (time.process_time() - start) / n

    ratios, mine, theirs = [], [], []
    for index in range(rounds):
        if index % 2:
            c, base = per_op(contender), per_op(baseline)
        else:
            base, c = per_op(baseline), per_op(contender)
        if base > 0:
            ratios.append(c / base)
        mine.append(c)
        theirs.append(base)
    return statistics.median(ratios), statistics.median(mine), statistics.median(theirs)


def main() -> None:
    django_setup()
    from django.core.cache.backends.locmem import LocMemCache
    from django_redis.cache import RedisCache

    from resilience.cache import FallbackCache

    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
    params = {"KEY_PREFIX": "bench", "TIMEOUT": 300}
    options = {"SOCKET_CONNECT_TIMEOUT": 0.25, "SOCKET_TIMEOUT": 0.25}
    plain_redis = RedisCache(redis_url, {**params, "OPTIONS": options})
    fallback = FallbackCache(redis_url, {**params, "OPTIONS": {**options, "STATS_FLUSH_INTERVAL": 1}})
    locmem = LocMemCache("bench", params)
    down = FallbackCache(_dead_redis_url(), {**params, "OPTIONS": {**options, "PROBE_INTERVAL": 3600}})
    value = {"user": 42, "items": list(range(20)), "name": "x" * 100}
    for cache in (plain_redis, fallback, locmem, down):
        cache.set("misc:bench", value)
    assert down.in_fallback and fallback.backend_name == "redis"

    overhead, wrapped, plain = paired_ratio(lambda: fallback.get("misc:bench"),
                                            lambda: plain_redis.get("misc:bench"))
    cpu_overhead, cpu_wrapped, cpu_plain = cpu_ratio(lambda: fallback.get("misc:bench"),
                                                     lambda: plain_redis.get("misc:bench"))
    down_ratio, down_get, locmem_get = paired_ratio(lambda: down.get("misc:bench"),
                                                    lambda: locmem.get("misc:bench"), n=2000)
    table("Cache: get hit (median of paired, alternating rounds)",
          ("contender", "per get", "ratio", "target"), [
        ("django-redis get", fmt_time(plain), "1.00 (baseline)", ""),
        ("FallbackCache on Redis", fmt_time(wrapped), f"{overhead:.3f}",
         f"<= 1.10: {verdict(overhead <= 1.10)}"),
        ("django-redis get, process CPU", fmt_time(cpu_plain), "1.00 (baseline)", ""),
        ("FallbackCache on Redis, process CPU", fmt_time(cpu_wrapped), f"{cpu_overhead:.3f}",
         f"<= 1.10: {verdict(cpu_overhead <= 1.10)}"),
        ("LocMemCache get", fmt_time(locmem_get), "1.00 (baseline)", ""),
        ("FallbackCache, Redis down", fmt_time(down_get), f"{down_ratio:.3f}",
         f"<= 2.0: {verdict(down_ratio <= 2.0)}"),
    ])
    for cache in (plain_redis, fallback):
        cache.delete("misc:bench")


if __name__ == "__main__":
    main()
