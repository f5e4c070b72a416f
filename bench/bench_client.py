"""Client benchmark against a fast loopback upstream, side by side in one run:

- a call that reaches the upstream with everything on (retrying adapter,
  breaker shared through Redis, call log, metrics) vs a bare
  `requests.Session` with the same timeouts, both against a local nginx
  (Debian's nginx-light; the Python fake when it is missing): <= 1.05x,
  since a healthy call makes no Redis round trip; and the same as a
  response-cache miss, which also looks the response up, stores it and takes
  the single-flight slot (for scale);
- cache-hit path vs a `requests_cache.CachedSession` hit on the same URL:
  >= 10x faster, with local memory and with Redis (with the near cache on,
  the default, and off: then every hit pays the Redis round trip);
- an open breaker's rejection: < 50 µs (the rejection itself, and sustained
  with the call-log writer inserting every rejected call's row meanwhile);
- 16 threads against a 100 ms upstream: wall time close to one call.
"""
from __future__ import annotations

import itertools
import os
import statistics
import threading
import time

from bench.common import Nginx, compare, django_setup, fmt_time, paired_ratio, per_op, table, verdict

N = 300


def _make_upstream(name: str, url: str, **fields: object) -> None:
    from resilience.models import Upstream

    Upstream.objects.update_or_create(name=name, defaults={
        "base_url": url, "retry_total": 2, "retry_backoff_factor": 0.1, "breaker_fail_max": 5,
        "pool_size": 32, "connect_timeout": 1, "read_timeout": 5, "deadline": 10, **fields})


def main() -> None:
    django_setup()
    from tests.support.fake_upstream import FakeUpstream, Reply

    fake = FakeUpstream().start()
    fake.script("/slow", Reply(200, body={"ok": True}, delay=0.1))
    fake.script("/down", Reply(500))
    _make_upstream("bench", fake.url, cache_ttl=300)
    _make_upstream("bench-nocache", fake.url, cache_ttl=0)
    # Open for the whole run: the first probe waits breaker_probe_interval (then up to the reset timeout).
    _make_upstream("bench-open", fake.url, retry_total=0, breaker_fail_max=1, breaker_reset_timeout=3600,
                   breaker_probe_interval=3600)
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
    rows = _call_rows(fake.url, redis_url)
    rows += _hit_rows(fake.url, redis_url)
    rows += _rejection_rows()
    rows += _wave_rows()
    table("Resilient client (median of interleaved rounds)", ("path", "per call", "ratio", "target"), rows)
    fake.stop()


def _call_rows(fake_url: str, redis_url: str) -> list[tuple[str, ...]]:
    """A call that reaches the upstream (and a cache miss) vs a bare requests.Session, on nginx."""
    import requests
    from django.core.cache import caches
    from django.test import override_settings

    from resilience import upstream
    from resilience.cache import reset_engines
    from resilience.client import reset_clients

    counter = itertools.count()
    nginx = Nginx().start() if Nginx.available() else None
    target_url = nginx.url if nginx is not None else fake_url
    _make_upstream("bench-nginx", target_url, cache_ttl=0)
    _make_upstream("bench-nginx-cached", target_url, cache_ttl=300)
    bare = requests.Session()
    bare.trust_env = False  # as the client's sessions: no per-request proxy/netrc lookups

    def bare_get() -> bytes:
        return bare.get(f"{target_url}/item?i={next(counter)}", timeout=(3, 10)).content

    on_redis = {"default": {"BACKEND": "resilience.cache.FallbackCache", "LOCATION": redis_url,
                            "KEY_PREFIX": "rslbench"}}
    with override_settings(CACHES=on_redis):
        reset_engines()
        reset_clients()
        uncached, cached = upstream("bench-nginx"), upstream("bench-nginx-cached")
        call_ratio, call_cost, bare_cost = paired_ratio(
            lambda: uncached.get(f"/item?i={next(counter)}").content, bare_get, n=100, rounds=41)
        miss_ratio, miss_cost, _ = paired_ratio(
            lambda: cached.get(f"/item?i={next(counter)}").content, bare_get, n=60, rounds=31)
        caches["default"].clear()
    reset_engines()
    reset_clients()
    if nginx is not None:
        nginx.stop()
    against = "nginx" if nginx is not None else "Python fake"
    return [(f"bare requests.Session GET ({against}, same timeouts)", fmt_time(bare_cost),
             "1.00 (baseline)", ""),
            ("client call: retries+breaker(Redis)+log+metrics", fmt_time(call_cost), f"{call_ratio:.3f}",
             f"<= 1.05: {verdict(call_ratio <= 1.05)}"),
            ("client cache miss on Redis (also looks up + stores)", fmt_time(miss_cost), f"{miss_ratio:.3f}",
             "(for scale)")]


def _hit_rows(fake_url: str, redis_url: str) -> list[tuple[str, ...]]:
    """The cache-hit path vs a requests_cache hit: local memory, Redis, Redis without the near cache."""
    from django.conf import settings
    from django.core.cache import caches
    from django.test import override_settings

    from resilience.cache import reset_engines
    from resilience.client import reset_clients

    rows = []
    variants = (("local memory", "", "memory", 1.0), ("Redis", redis_url, "redis", 1.0),
                ("Redis, near cache off", redis_url, "redis", 0))
    for label, location, rc_backend, near in variants:
        caches_setting = {"default": {"BACKEND": "resilience.cache.FallbackCache", "LOCATION": location,
                                      "KEY_PREFIX": "rslbench"}}
        resilience = {**settings.RESILIENCE, "HTTP_CACHE_NEAR_SECONDS": near}
        with override_settings(CACHES=caches_setting, RESILIENCE=resilience):
            reset_engines()
            reset_clients()
            speedup, client_cost, session_cost = _hit_speedup(fake_url, redis_url, rc_backend)
            rows.append((f"requests_cache hit ({label})", fmt_time(session_cost), "1.00 (baseline)", ""))
            rows.append((f"client cache hit ({label})", fmt_time(client_cost), f"{speedup:.1f}x faster",
                         f">= 10x: {verdict(speedup >= 10)}"))
            caches["default"].clear()
    reset_engines()
    reset_clients()
    return rows


def _hit_speedup(fake_url: str, redis_url: str, rc_backend: str) -> tuple[float, float, float]:
    """(speedup, client hit, requests_cache hit) on the same cached URL, under the current settings."""
    import requests_cache

    from resilience import upstream

    hit_client = upstream("bench")
    hit_client.get("/hit")
    if rc_backend == "redis":
        backend = requests_cache.RedisCache(connection=__import__("redis").Redis.from_url(redis_url))
    else:
        backend = "memory"
    cached_session = requests_cache.CachedSession(backend=backend, expire_after=300)
    cached_session.cache.clear()
    cached_session.get(f"{fake_url}/hit")
    assert hit_client.get("/hit").from_cache and cached_session.get(f"{fake_url}/hit").from_cache
    hit = compare({
        "requests_cache": lambda s=cached_session: s.get(f"{fake_url}/hit").content,
        "client": lambda c=hit_client: c.get("/hit").content,
    }, n=N * 3)
    return hit["requests_cache"] / hit["client"], hit["client"], hit["requests_cache"]


def _rejection_rows() -> list[tuple[str, ...]]:
    """An open breaker's rejection: alone, and sustained with its call-log rows written."""
    from django.conf import settings
    from django.test import override_settings

    from resilience import exceptions, upstream
    from resilience.telemetry.calllog import call_log_discard

    opened = upstream("bench-open")
    try:
        opened.get("/down")
    except exceptions.UpstreamError:
        pass

    def rejected() -> None:
        try:
            opened.get("/down")
        except exceptions.BreakerOpen:
            return
        raise AssertionError("breaker did not reject")

    # The rejection itself: its log row is only queued. Between rounds the
    # queue is dropped, as the writer would have drained it (in production it
    # runs every second); letting tens of thousands of rows pile up would
    # measure the garbage collector walking them instead.
    with override_settings(RESILIENCE={**settings.RESILIENCE, "CALL_LOG_FLUSH_INTERVAL": 0,
                                       "CALL_LOG_BUFFER_MAX": 10**9}):
        for _ in range(200):
            rejected()
        samples = []
        for _ in range(15):
            call_log_discard()
            samples.append(per_op(rejected, 2000))
        open_cost = statistics.median(samples)
    call_log_discard()
    sustained = compare({"open breaker rejection": rejected}, n=N * 10)["open breaker rejection"]
    return [("open breaker rejection", fmt_time(open_cost), "", f"< 50 µs: {verdict(open_cost < 50e-6)}"),
            ("... sustained, incl. writing its call-log row", fmt_time(sustained), "", "(for scale)")]


def _wave_rows() -> list[tuple[str, ...]]:
    """16 threads against a 100 ms upstream: the wall time of the wave, in calls."""
    from resilience import upstream

    wave_client = upstream("bench")
    walls = []
    for _ in range(3):
        threads = [threading.Thread(target=wave_client.get, args=("/slow",), kwargs={"cache": False})
                   for _ in range(16)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        walls.append(time.perf_counter() - started)
    wave = min(walls)
    return [("16 threads x 100 ms upstream, wall", fmt_time(wave), f"{wave / 0.1:.2f} calls' time",
             f"close to 1 (< 1.5): {verdict(wave / 0.1 < 1.5)}")]


if __name__ == "__main__":
    main()
