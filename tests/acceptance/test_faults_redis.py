"""Faults between the service and Redis (tests.support.faultproxy in front
of the shared test Redis database): the fallback cache never lets a Redis
fault reach its caller, pays at most the configured socket timeout for the
operation that detects it, serves every later operation from local memory
without touching Redis until the probe interval passes, and is back on
Redis by itself once the fault is lifted.

Upper bounds only (the documented cost, plus slack for a busy machine);
the probe interval is moved on the engine's clock, not waited out."""
from __future__ import annotations

import time

import pytest

from resilience.cache import FallbackCache, reset_engines
from resilience.cache.engine import Engine
from tests.resilience.conftest import Clock
from tests.support.faultproxy import FaultProxy

SOCKET_TIMEOUT = 0.25  # the setting's default (CACHE_SOCKET_TIMEOUT, CACHE_CONNECT_TIMEOUT)
PROBE_INTERVAL = 5.0
SLACK = 0.5
BIG = "x" * 200_000  # a value whose transfer a bandwidth limit stretches well past the timeout

FAULTS = [
    ("latency", lambda p: p.latency(1.0)),
    ("bandwidth_slow_answers", lambda p: p.bandwidth(2000)),
    ("reset", lambda p: p.reset_after(0)),
    ("blackhole", lambda p: p.blackhole()),
    ("refused", lambda p: p.refuse()),
]


@pytest.fixture
def clock(monkeypatch):
    tick = Clock()
    monkeypatch.setattr(Engine, "clock", staticmethod(tick))
    return tick


@pytest.fixture
def proxy(redis_url):
    from urllib.parse import urlsplit

    parts = urlsplit(redis_url)
    with FaultProxy(parts.hostname, parts.port or 6379) as p:
        p.db = parts.path.lstrip("/") or "0"
        yield p


def _cache(proxy: FaultProxy) -> FallbackCache:
    reset_engines()
    return FallbackCache(f"redis://{proxy.address}/{proxy.db}", {
        "KEY_PREFIX": "accept", "TIMEOUT": 60, "OPTIONS": {
            "PROBE_INTERVAL": PROBE_INTERVAL, "STATS_FLUSH_INTERVAL": 3600,
            "SOCKET_TIMEOUT": SOCKET_TIMEOUT, "SOCKET_CONNECT_TIMEOUT": SOCKET_TIMEOUT}})


def _operations(cache: FallbackCache, i: int):
    return [
        ("set", lambda: cache.set(f"misc:k{i}", i)),
        ("get", lambda: cache.get(f"misc:k{i}")),
        ("get big", lambda: cache.get("misc:big")),
        ("get_many", lambda: cache.get_many([f"misc:k{i}", "misc:none"])),
        ("add", lambda: cache.add(f"misc:once{i}", 1)),
        ("incr_window", lambda: cache.incr_window(f"throttle:t{i}", 60)),
        ("delete", lambda: cache.delete(f"misc:k{i}")),
    ]


@pytest.mark.parametrize(("fault", "switch"), FAULTS, ids=[f[0] for f in FAULTS])
def test_redis_faults_never_reach_callers_and_cost_at_most_the_socket_timeout(proxy, clock, fault, switch):
    cache = _cache(proxy)
    cache.set("misc:big", BIG)
    assert cache.get("misc:big") == BIG and cache.backend_name == "redis"
    errors_before = cache.stats()["errors"]

    switch(proxy)
    timings: list[tuple[str, float]] = []
    for i in range(20):
        for name, op in _operations(cache, i):
            started = time.monotonic()
            op()  # any exception here fails the test: faults must not surface
            timings.append((name, time.monotonic() - started))
    slowest = max(timings, key=lambda t: t[1])
    print(f"redis {fault}: {len(timings)} ops, slowest {slowest[0]} {slowest[1]:.3f}s, "
          f"in fallback={cache.in_fallback}")
    assert cache.in_fallback, f"{fault} was never detected"
    assert slowest[1] <= SOCKET_TIMEOUT + SLACK, f"{fault}: {slowest[0]} took {slowest[1]:.2f}s"
    # Detected once: every operation after the first failure was served from
    # memory without another Redis attempt until the probe interval passes.
    stats = cache.stats()
    assert stats["errors"] - errors_before == 1, stats
    assert cache.get("misc:once3") == 1  # written during the fault, served from memory

    proxy.heal()
    assert cache.in_fallback  # nothing probes before the interval
    clock.now += PROBE_INTERVAL
    cache.set("misc:after", "yes")
    assert not cache.in_fallback and cache.backend_name == "redis", f"not back on Redis after {fault}"
    assert cache.get("misc:after") == "yes"
    reset_engines()
