"""The fallback cache backend against a real Redis: the whole Django cache API
in both modes, namespaces, statistics across processes, and Redis dying and
coming back mid-traffic."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import redis
from redis.exceptions import LockError, LockNotOwnedError

from resilience.cache import NAMESPACES, FallbackCache, cache_key, reset_engines
from tests.support.redis_server import free_port


def make_cache(location: str, prefix: str = "t", **options) -> FallbackCache:
    options.setdefault("PROBE_INTERVAL", 0.3)
    options.setdefault("STATS_FLUSH_INTERVAL", 3600)  # flushed explicitly by stats()
    return FallbackCache(location, {"KEY_PREFIX": prefix, "TIMEOUT": 60, "OPTIONS": options})


@pytest.fixture(params=["memory", "redis"])
def any_cache(request):
    if request.param == "memory":
        yield make_cache("")
    else:
        url = request.getfixturevalue("redis_url")
        c = make_cache(url)
        c.clear()
        c.reset_stats()
        yield c
        c.clear()
    reset_engines()


def test_django_cache_api_works_on_both_backends(any_cache):
    c = any_cache
    assert c.get("misc:a") is None
    assert c.get("misc:a", "dflt") == "dflt"
    c.set("misc:a", {"x": 1})
    assert c.get("misc:a") == {"x": 1}
    assert c.add("misc:a", 2) is False
    assert c.add("misc:b", 2) is True
    assert c.has_key("misc:b") and not c.has_key("misc:zz")
    assert c.get_many(["misc:a", "misc:b", "misc:zz"]) == {"misc:a": {"x": 1}, "misc:b": 2}
    assert c.set_many({"misc:c": 3, "misc:d": 4}) == []
    assert c.incr("misc:c") == 4
    assert c.incr("misc:c", 10) == 14
    assert c.decr("misc:c", 4) == 10
    with pytest.raises(ValueError):
        c.incr("misc:missing")
    assert c.touch("misc:d", 100) is True
    assert c.touch("misc:missing") is False
    assert 90 <= c.ttl("misc:d") <= 100
    c.set("misc:forever", 1, timeout=None)
    assert c.ttl("misc:forever") is None
    assert c.ttl("misc:missing") == 0
    assert c.get_or_set("misc:e", lambda: "made") == "made"
    assert c.get_or_set("misc:e", lambda: "again") == "made"
    assert c.delete("misc:a") is True
    assert c.delete("misc:a") is False
    c.delete_many(["misc:b", "misc:c"])
    assert c.get_many(["misc:b", "misc:c"]) == {}
    c.clear()
    assert c.get("misc:d") is None


def test_the_async_methods_answer_like_the_sync_ones_and_wait_on_redis_off_the_loop(any_cache):
    """aget/aset/aadd/adelete/aget_many: the same entries as the sync API; with
    Redis configured each runs in a worker thread (never on the event loop's)."""
    import asyncio

    c, threads = any_cache, set()
    get = c.get

    def watched_get(*args):
        threads.add(threading.get_ident())
        return get(*args)

    async def work():
        c.get = watched_get
        try:
            await c.aset("misc:async", {"n": 1})
            assert await c.aget("misc:async") == {"n": 1}
            assert await c.aget("misc:nothing", "dflt") == "dflt"
            assert await c.aadd("misc:async", 2) is False and await c.aadd("misc:async2", 2) is True
            assert await c.aget_many(["misc:async", "misc:async2", "misc:zz"]) == {"misc:async": {"n": 1},
                                                                                 "misc:async2": 2}
            assert await c.adelete("misc:async") is True and get("misc:async") is None
        finally:
            del c.get
        return threading.get_ident()

    loop_thread = asyncio.run(work())
    assert threads and (loop_thread in threads) is (not c.redis_configured)


def test_expired_entries_are_gone(any_cache):
    # Expiry is Redis's own clock (and time.time() in LocMemCache): a short
    # timeout rather than a movable clock.
    any_cache.set("misc:short", 1, timeout=0.1)
    assert any_cache.get("misc:short") == 1
    time.sleep(0.15)
    assert any_cache.get("misc:short") is None
    assert list(any_cache.iter_keys("misc:*")) == []


def test_namespaces_clear_independently(any_cache):
    c = any_cache
    for i in range(3):
        c.set(cache_key("ai", "t", i), i)
        c.set(cache_key("http", "github", i), i)
    assert sorted(c.iter_keys("ai:*")) == ["ai:t:0", "ai:t:1", "ai:t:2"]
    assert c.delete_pattern("ai:*") == 3
    assert list(c.iter_keys("ai:*")) == []
    assert len(list(c.iter_keys("http:*"))) == 3
    assert c.delete_pattern("http:github:1") == 1
    assert sorted(c.iter_keys("http:*")) == ["http:github:0", "http:github:2"]


def test_unknown_namespace_is_refused():
    with pytest.raises(ValueError, match="unknown cache namespace"):
        cache_key("nope", "x")


def test_lock_excludes_a_second_holder(any_cache):
    first = any_cache.lock("flight:k", timeout=5)
    second = any_cache.lock("flight:k", timeout=5)
    assert first.acquire(blocking=False)
    assert not second.acquire(blocking=False)
    assert not second.acquire(blocking=True, blocking_timeout=0.05)
    first.release()
    assert second.acquire(blocking=False)
    second.release()
    with pytest.raises(LockError):
        second.release()


def test_lock_expires_when_holder_never_releases(any_cache):
    assert any_cache.lock("flight:exp", timeout=0.2).acquire(blocking=False)
    assert any_cache.lock("flight:exp", timeout=5).acquire(blocking=True, blocking_timeout=2)


def test_releasing_an_expired_lock_says_so(any_cache, caplog):
    lock = any_cache.lock("flight:late", timeout=0.05)
    assert lock.acquire(blocking=False)
    time.sleep(0.08)  # the holder outlives its timeout
    with pytest.raises(LockNotOwnedError):
        lock.release()
    assert any("expired before its holder released it" in r.getMessage() for r in caplog.records)
    with pytest.raises(LockError):  # released once, whatever happened
        lock.release()


def test_clear_never_touches_other_prefixes(redis_url):
    ours, theirs = make_cache(redis_url, prefix="ours"), make_cache(redis_url, prefix="theirs")
    raw = redis.Redis.from_url(redis_url)
    raw.set("unprefixed-app-key", "keep")
    ours.set("ai:x", 1)
    theirs.set("ai:x", 2)
    ours.clear()
    assert ours.get("ai:x") is None
    assert theirs.get("ai:x") == 2
    assert raw.get("unprefixed-app-key") == b"keep"
    theirs.clear()
    raw.delete("unprefixed-app-key")


def test_stats_count_per_namespace_and_hit_rate(any_cache):
    c = any_cache
    c.set("ai:a", 1)
    c.get("ai:a")
    c.get("ai:a")
    c.get("ai:missing")
    c.get("http:missing")
    ai = c.stats(namespace="ai")
    assert (ai["hits"], ai["misses"], ai["sets"]) == (2, 1, 1)
    total = c.stats()
    assert (total["hits"], total["misses"]) == (2, 2)
    assert total["backend"] == ("redis" if c.redis_configured else "memory")


def test_counting_adds_no_redis_round_trip(redis_process):
    c = make_cache(redis_process.url)
    raw = redis.Redis.from_url(redis_process.url)
    c.set("misc:k", 1)

    def commands() -> int:
        return raw.info("stats")["total_commands_processed"]

    before = commands()
    for _ in range(200):
        c.get("misc:k")
    after = commands()
    # 200 GETs plus the INFO call that measured `before`.
    assert after - before == 201
    assert c.stats()["hits"] == 200


def test_stats_read_while_other_threads_count(redis_url):
    """Reading statistics while other threads count never fails and loses
    nothing (it used to iterate the live counters while a flush had just
    swapped in a fresh one that other threads were adding names to:
    "dictionary changed size during iteration")."""
    # Flushed every millisecond: the counters are often new and growing.
    c = make_cache(redis_url, prefix="race", STATS_FLUSH_INTERVAL=0.001)
    c.clear()
    c.reset_stats()
    names = [*sorted(NAMESPACES), "elsewhere"]
    for ns in names:
        c.set(f"{ns}:hit", 1)
    stop = threading.Event()
    lookups = [0] * 6
    failures: list[BaseException] = []

    def count(slot: int) -> None:
        while not stop.is_set():
            for ns in names:  # one new counter name per call: a hit, then a miss
                c.get(f"{ns}:hit")
                c.get(f"{ns}:miss")
                lookups[slot] += 2

    def read() -> None:
        try:
            for _ in range(600):
                c.stats()
        except Exception as err:
            failures.append(err)

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, as a loaded server does
    counters = [threading.Thread(target=count, args=(i,)) for i in range(len(lookups))]
    reader = threading.Thread(target=read)
    try:
        for thread in [*counters, reader]:
            thread.start()
        reader.join(60)
    finally:
        stop.set()
        for thread in counters:
            thread.join(10)
        sys.setswitchinterval(switch)
    assert failures == []
    # Nothing lost (a flush still in flight in the background lands within ms).
    deadline = time.monotonic() + 2
    while (stats := c.stats())["hits"] + stats["misses"] < sum(lookups) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert stats["scope"] == "all workers"
    assert (stats["hits"], stats["misses"]) == (sum(lookups) // 2, sum(lookups) // 2)
    c.clear()
    c.reset_stats()


def test_stats_are_summed_across_processes(redis_url):
    c = make_cache(redis_url, prefix="multi")
    c.clear()
    c.reset_stats()
    script = textwrap.dedent(f"""
        import django
        from django.conf import settings
        settings.configure(CACHES={{"default": {{
            "BACKEND": "resilience.cache.FallbackCache", "LOCATION": {redis_url!r},
            "KEY_PREFIX": "multi", "OPTIONS": {{"STATS_FLUSH_INTERVAL": 3600}}}}}})
        django.setup()
        from django.core.cache import cache
        cache.set("ai:k", 1)
        for _ in range(5):
            cache.get("ai:k")
        cache.get("ai:nothing")
    """)
    for _ in range(2):
        # Counts still pending at exit are flushed by the atexit hook.
        subprocess.run([sys.executable, "-c", script], check=True, cwd=os.getcwd(), timeout=60)
    c.get("ai:k")
    stats = c.stats(namespace="ai")
    assert stats["scope"] == "all workers"
    assert (stats["hits"], stats["misses"], stats["sets"]) == (11, 2, 2)
    c.clear()
    c.reset_stats()


def test_nothing_listening_serves_from_memory_without_retrying_each_call():
    c = make_cache(f"redis://127.0.0.1:{free_port()}/0", PROBE_INTERVAL=60)
    c.set("misc:a", 1)
    assert c.get("misc:a") == 1
    assert c.in_fallback and c.backend_name == "memory"
    for _ in range(100):
        c.get("misc:a")
    stats = c.stats()
    # Only the first operation tried Redis; the rest waited for the probe interval.
    assert stats["errors"] == 1
    assert stats["fallbacks"] == 1
    assert stats["scope"] == "this process"
    assert stats["hits"] == 101


def test_a_plain_django_redis_cache_on_the_same_url_does_not_lend_it_its_pool():
    """django-redis keeps one pool per URL for every cache: a plain cache that
    made it first used to hand the FallbackCache its pool, without the short
    timeouts and the reply deadline that tell an outage (a Redis that accepts
    connections and never answers then took redis-py's 5 s, not 0.1 s)."""
    from django_redis.cache import RedisCache

    from resilience.cache.deadline import DeadlineHiredisParser

    url = f"redis://127.0.0.1:{free_port()}/0"  # pools connect lazily: nothing needs to listen
    plain = RedisCache(url, {"OPTIONS": {}}).client.get_client().connection_pool
    c = make_cache(url, SOCKET_TIMEOUT=0.1, SOCKET_CONNECT_TIMEOUT=0.1)
    own = c.engine.redis.client.get_client().connection_pool
    assert own is not plain
    assert own.connection_kwargs["socket_timeout"] == 0.1
    assert own.connection_kwargs["socket_connect_timeout"] == 0.1
    assert own.connection_kwargs["parser_class"] is DeadlineHiredisParser
    assert plain.connection_kwargs["parser_class"] is not DeadlineHiredisParser  # nor lends it its own
    reset_engines()


def test_redis_dying_and_returning_mid_traffic(redis_process, caplog, cache_clock):
    c = make_cache(redis_process.url, PROBE_INTERVAL=0.3)
    errors: list[BaseException] = []
    stop = threading.Event()
    ops = {"n": 0}

    def traffic() -> None:
        i = 0
        while not stop.is_set():
            try:
                c.set(f"misc:{i % 50}", i)
                c.get(f"misc:{(i * 7) % 50}")
                c.get_many([f"misc:{i % 50}", "misc:x"])
                c.add("misc:once", i)
                c.delete("misc:once")
                ops["n"] += 1
            except Exception as err:  # the whole point: nothing may get here
                errors.append(err)
            i += 1

    def wait_for(condition, seconds: float = 5) -> bool:
        deadline = time.monotonic() + seconds
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.005)
        return condition()

    workers = [threading.Thread(target=traffic) for _ in range(4)]
    for w in workers:
        w.start()
    try:
        assert wait_for(lambda: ops["n"] > 20)
        assert c.backend_name == "redis"
        redis_process.kill()
        assert wait_for(lambda: c.in_fallback), "the backend never noticed Redis was gone"
        served_in_fallback = ops["n"]
        assert wait_for(lambda: ops["n"] > served_in_fallback + 20), "traffic stalled while Redis was down"

        redis_process.start()
        time.sleep(0.05)
        assert c.in_fallback, "probed Redis before the probe interval passed"
        cache_clock.advance(0.3)
        restarted = time.monotonic()
        wait_for(lambda: not c.in_fallback)
        back_after = time.monotonic() - restarted
    finally:
        stop.set()
        for w in workers:
            w.join()
    assert errors == []
    assert c.backend_name == "redis"
    # Back on Redis with the first operation once the probe interval passed.
    assert back_after < 0.5
    assert c.stats()["fallbacks"] == 1
    messages = [r.getMessage() for r in caplog.records if r.name == "resilience.cache"]
    assert sum("redis unavailable" in m for m in messages) == 1
    assert sum("redis is back" in m for m in messages) == 1
    # Each worker falls back on its own: its lines say which worker (pid) it is.
    assert all(f"worker {os.getpid()} " in m for m in messages if "redis unavailable" in m or "is back" in m)


def test_shared_says_whether_other_processes_see_the_entries(redis_process):
    assert make_cache("").shared is False  # plain local memory
    c = make_cache(redis_process.url, PROBE_INTERVAL=60)
    c.set("misc:k", 1)
    assert c.shared is True
    redis_process.kill()
    c.set("misc:k", 2)  # noticed: now served from this process's memory
    assert c.shared is False and c.in_fallback


def test_redis_down_at_start_then_appearing(redis_process, cache_clock):
    redis_process.kill()
    c = make_cache(redis_process.url, PROBE_INTERVAL=0.2)
    c.set("misc:k", "memory")
    assert c.in_fallback
    redis_process.start()
    cache_clock.advance(0.19)
    c.set("misc:k", "early")  # within the probe interval: memory, no probe
    assert c.in_fallback
    cache_clock.advance(0.01)
    c.set("misc:k", "redis")  # the probe
    assert not c.in_fallback
    assert redis.Redis.from_url(redis_process.url).exists("t:1:misc:k")


def test_lock_falls_back_to_memory_when_redis_is_down(redis_process):
    c = make_cache(redis_process.url, PROBE_INTERVAL=60)
    redis_process.kill()
    lock = c.lock("flight:x", timeout=5)
    assert lock.acquire(blocking=False)
    assert not c.lock("flight:x", timeout=5).acquire(blocking=False)
    lock.release()


@pytest.mark.parametrize("on_redis", [False, True])
def test_incr_window_counts_in_one_window_that_expires(on_redis, redis_url, settings):
    from django.core.cache import caches

    from resilience.cache import reset_engines

    settings.CACHES = {"default": {"BACKEND": "resilience.cache.FallbackCache",
                                   "LOCATION": redis_url if on_redis else "", "KEY_PREFIX": "rslwindow"}}
    reset_engines()
    store = caches["default"]
    assert [store.incr_window("w", 60) for _ in range(3)] == [1, 2, 3]
    assert store.get("w") == 3
    assert 0 < store.ttl("w") <= 60  # the first increment set the window, later ones kept it
    store.delete("w")
    assert store.incr_window("w", 60) == 1
