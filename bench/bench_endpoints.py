"""Endpoint selection cost, side by side in one run, with the breakers' and
cooldowns' shared state on Redis (BENCH_REDIS_URL, else local memory):

- `Pool.choose()` at 10 endpoints vs 1 endpoint, per strategy: the
  selection adds <= 20 µs per call at 10 endpoints;
- a whole call through the client against a local nginx (or the Python
  fake): a 10-endpoint upstream vs a one-endpoint upstream, paired rounds;
  the difference per call is the selection's cost in context (for scale).
"""
from __future__ import annotations

import itertools
import os

from bench.common import Nginx, compare, django_setup, fmt_time, paired_ratio, table, verdict

N = 2000
TARGET_US = 20.0
STRATEGIES = ("weighted", "priority", "least_in_flight", "score")


def _pool_upstream(name: str, url: str, endpoints: int, strategy: str) -> None:
    from resilience.models import Endpoint, Upstream

    row, _ = Upstream.objects.update_or_create(name=name, defaults={
        "base_url": url, "retry_total": 2, "retry_backoff_factor": 0.1, "breaker_fail_max": 5,
        "pool_size": 32, "connect_timeout": 1, "read_timeout": 5, "deadline": 10,
        "endpoint_strategy": strategy, "log_sample_rate": 0.01})
    Endpoint.objects.filter(upstream=row).delete()
    for i in range(endpoints if endpoints > 1 else 0):  # one endpoint: the upstream's own URL
        Endpoint.objects.create(upstream=row, name=f"e{i}", base_url=url, weight=1 + i % 3, priority=i)


def main() -> None:
    django_setup()
    from django.test import override_settings

    from resilience.cache import reset_engines
    from resilience.client import reset_clients
    from resilience.telemetry.calllog import call_log_discard
    from tests.support.fake_upstream import FakeUpstream

    location, store = _store_location(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14"))
    fake = FakeUpstream().start()
    nginx = Nginx().start() if Nginx.available() else None
    target = nginx.url if nginx is not None else fake.url
    caches = {"default": {"BACKEND": "resilience.cache.FallbackCache", "LOCATION": location,
                          "KEY_PREFIX": "rslbench"}}
    with override_settings(CACHES=caches):
        reset_engines()
        reset_clients()
        rows, worst = _choose_rows(target)
        calls = _call_rows()
        call_log_discard()
    reset_engines()
    reset_clients()
    fake.stop()
    if nginx is not None:
        nginx.stop()
    table(f"Pool.choose(): 10 endpoints vs 1 (state on {store})",
          ("strategy", "1 endpoint", "10 endpoints", "added", "target"), rows)
    against = "nginx" if nginx is not None else "Python fake"
    # priority keeps one endpoint's pooled connection busy; weighted spreads
    # calls over ten connections (and ten breakers' re-reads of shared state).
    table(f"A whole call against {against}, vs a one-endpoint upstream in paired rounds",
          ("upstream", "per call", "ratio", "difference"), calls)
    print(f"\nworst added selection cost: {worst:.1f} µs ({verdict(worst <= TARGET_US)})")


def _store_location(redis_url: str) -> tuple[str, str]:
    """(cache LOCATION, its name): Redis when it answers, else local memory."""
    import redis as redis_lib

    try:
        redis_lib.Redis.from_url(redis_url, socket_timeout=0.5).ping()
    except redis_lib.RedisError:
        return "", "local memory"
    return redis_url, "Redis"


def _choose_rows(target: str) -> tuple[list[tuple[str, ...]], float]:
    """Pool.choose() with ten endpoints vs one, per strategy; and the worst added cost in µs."""
    from resilience import upstream

    rows = []
    worst = 0.0
    for strategy in STRATEGIES:
        _pool_upstream(f"one-{strategy}", target, 1, strategy)
        _pool_upstream(f"ten-{strategy}", target, 10, strategy)
        one = upstream(f"one-{strategy}")._live.current().pool
        ten = upstream(f"ten-{strategy}")._live.current().pool
        if strategy == "score":  # a window with data: every choice weighs ten scores
            for i, member in enumerate(ten.members):
                for _ in range(20):
                    ten.observe(member, ok=True, latency_ms=5.0 + i)
        for pool in (one, ten):
            for _ in range(200):
                pool.choose()
        medians = compare({"one": one.choose, "ten": ten.choose}, n=N, rounds=9)
        one_cost, ten_cost = medians["one"], medians["ten"]
        added = (ten_cost - one_cost) * 1e6
        worst = max(worst, added)
        rows.append((strategy, fmt_time(one_cost), fmt_time(ten_cost), f"{added:.1f} µs",
                     f"<= {TARGET_US:.0f} µs: {verdict(added <= TARGET_US)}"))
    return rows, worst


def _call_rows() -> list[tuple[str, ...]]:
    """A whole call on a ten-endpoint upstream vs a one-endpoint one, in paired rounds."""
    from resilience import upstream

    counter = itertools.count()
    one_client = upstream("one-weighted")
    calls = []
    for strategy in ("weighted", "priority"):
        ten_client = upstream(f"ten-{strategy}")
        ratio, ten_call, one_call = paired_ratio(
            lambda c=ten_client: c.get(f"/item?i={next(counter)}").content,
            lambda: one_client.get(f"/item?i={next(counter)}").content, n=100, rounds=31)
        calls.append((f"10 endpoints, {strategy}", fmt_time(ten_call), f"{ratio:.3f}",
                      f"{(ten_call - one_call) * 1e6:+.1f} µs vs {fmt_time(one_call)}"))
    return calls


if __name__ == "__main__":
    main()
