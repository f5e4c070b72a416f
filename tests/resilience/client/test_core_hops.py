"""The async face's hop policy (resilience.client.core): a call's steps run on
the event loop and only their store work leaves it, so no Redis command is
ever sent from the loop's thread.

Every Redis command takes a connection from the django-redis client's
connection pool: the tests wrap that pool's `get_connection` (the cache
engine's own seam, not redis itself) to note the thread each command runs on,
and fail when one ran on the loop's thread. Each test also checks that Redis
was used at all, so a call that never reached it cannot pass for one that
kept it off the loop; and the first test shows the watch does catch a
command sent from the loop.
"""
from __future__ import annotations

import asyncio
import threading
import traceback

import pytest
from asgiref.sync import async_to_sync

from resilience import exceptions as errors
from resilience import upstream
from resilience.cache import default_cache
from resilience.client.breaker import SharedBreaker
from resilience.client.endpoints import Pool
from resilience.models import Endpoint
from tests.support.fake_upstream import Reply

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def redis_threads(on_redis, monkeypatch):
    """The thread of every Redis command, as (command, thread id) pairs."""
    redis = default_cache().engine.redis
    pools = {id(pool): pool for pool in (redis.client.get_client(write=True).connection_pool,
                                         redis.client.get_client(write=False).connection_pool)}
    seen: list[tuple[str, int]] = []
    for pool in pools.values():
        original = pool.get_connection

        def watched(*args, original=original, **kwargs):
            seen.append((_sender(), threading.get_ident()))
            return original(*args, **kwargs)

        monkeypatch.setattr(pool, "get_connection", watched)
    return seen


def _sender() -> str:
    """The project's frame that sent the command (for the failure message)."""
    for frame in reversed(traceback.extract_stack(limit=30)[:-2]):
        if "/resilience/" in frame.filename and "/cache/" not in frame.filename:
            return f"{frame.filename.rsplit('/', 2)[-1]}:{frame.lineno} {frame.name}"
    return "?"


def _on_the_loop(seen: list[tuple[str, int]], work) -> tuple[list[str], int]:
    """Run `work()` (a coroutine function) on an event loop: the Redis commands
    sent from the loop's thread meanwhile, and how many were sent in all."""
    async def go() -> tuple[list[str], int]:
        loop_thread = threading.get_ident()
        seen.clear()
        await work()
        return [name for name, thread in seen if thread == loop_thread], len(seen)

    return async_to_sync(go)()


def _watched_calls(seen, work) -> int:
    on_loop, total = _on_the_loop(seen, work)
    assert on_loop == [], f"Redis commands sent from the event loop: {on_loop}"
    return total


def test_the_watch_catches_a_redis_command_sent_from_the_loop(redis_threads):
    async def blocking():
        default_cache().get("anything")  # a sync cache call on the loop: what must never happen

    on_loop, total = _on_the_loop(redis_threads, blocking)
    assert on_loop and total == len(on_loop)


def test_uncached_calls_send_no_redis_command_from_the_loop(redis_threads, fake, make_upstream, monkeypatch):
    make_upstream(cache_ttl=0)
    fake.script("/r", Reply(200, body={"v": 1}))
    monkeypatch.setattr(SharedBreaker, "closed_recheck", 0.0)  # every choice re-reads the breaker

    async def calls():
        for _ in range(5):
            assert (await upstream("api").aget("/r")).json() == {"v": 1}

    assert _watched_calls(redis_threads, calls) >= 5  # at least one breaker read each


def test_failures_and_the_breaker_opening_send_no_redis_command_from_the_loop(redis_threads, fake,
                                                                             make_upstream):
    make_upstream(retry_total=0, breaker_fail_max=2)
    fake.script("/down", Reply(500))

    async def calls():
        for expected in ("upstream_http_error", "upstream_http_error", "breaker_open"):
            with pytest.raises(errors.UpstreamError) as failed:
                await upstream("api").aget("/down")
            assert failed.value.code == expected

    assert _watched_calls(redis_threads, calls) > 0
    assert upstream("api").breaker.status()["state"] == "open"


@pytest.mark.parametrize("near_seconds", [0.0, 1.0], ids=["hit-from-redis", "hit-from-the-near-cache"])
def test_cached_calls_send_no_redis_command_from_the_loop(redis_threads, fake, make_upstream, settings,
                                                          near_seconds):
    settings.RESILIENCE = {**settings.RESILIENCE, "HTTP_CACHE_NEAR_SECONDS": near_seconds}
    make_upstream(cache_ttl=60)
    fake.script("/c", Reply(200, body={"v": 2}))

    async def calls():
        first = await upstream("api").aget("/c")
        again = await upstream("api").aget("/c")
        assert (first.from_cache, again.from_cache) == (False, True)

    assert _watched_calls(redis_threads, calls) > 0  # the miss's read, its lock and its store
    assert fake.count("/c") == 1


def test_single_flight_sends_no_redis_command_from_the_loop(redis_threads, fake, make_upstream):
    make_upstream(cache_ttl=60)
    fake.script("/popular", Reply(200, body={"v": 3}, delay=0.2))

    async def burst():
        answers = await asyncio.gather(*(upstream("api").aget("/popular") for _ in range(10)))
        assert sum(not a.shared for a in answers) == 1

    assert _watched_calls(redis_threads, burst) > 0
    assert fake.count("/popular") == 1


def test_a_streamed_call_sends_no_redis_command_from_the_loop(redis_threads, fake, make_upstream,
                                                              monkeypatch):
    make_upstream()
    fake.script("/s", Reply(200, chunks=(b"one ", b"two")))
    monkeypatch.setattr(SharedBreaker, "closed_recheck", 0.0)

    async def read():
        for _ in range(2):
            response = await upstream("api").aget("/s", stream=True)
            try:
                assert b"".join([chunk async for chunk in response.aiter_bytes()]) == b"one two"
            finally:
                await response.aclose()

    assert _watched_calls(redis_threads, read) > 0


def test_a_pool_that_cools_and_fails_over_sends_no_redis_command_from_the_loop(redis_threads, fakes,
                                                                               make_upstream, monkeypatch):
    row = make_upstream("pool", retry_total=2, endpoint_strategy="priority")  # e0 first, until cooled
    for i, server in enumerate(fakes):
        Endpoint.objects.create(upstream=row, name=f"e{i}", base_url=server.url, priority=i)
    fakes[0].script("/item", Reply(429, headers={"Retry-After": "30"}))
    for server in fakes[1:]:
        server.script("/item", Reply(200, body={"ok": True}))
    monkeypatch.setattr(Pool, "recheck", 0.0)  # every choice re-reads the shared cooldowns

    async def calls():
        for _ in range(6):
            assert (await upstream("pool").aget("/item")).json() == {"ok": True}

    assert _watched_calls(redis_threads, calls) > 0
    assert fakes[0].count("/item") >= 1  # cooled after its 429: the others served


def test_admission_to_limited_endpoints_sends_no_redis_command_from_the_loop(redis_threads, fakes,
                                                                            make_upstream, monkeypatch):
    """Endpoints with an rpm limit: each admission reserves room on Redis (a script)."""
    row = make_upstream("pool", retry_total=0)
    for i, server in enumerate(fakes[:2]):
        Endpoint.objects.create(upstream=row, name=f"e{i}", base_url=server.url, priority=i, rpm_limit=600)
        server.script("/item", Reply(200, body={"ok": i}))
    monkeypatch.setattr(Pool, "recheck", 0.0)
    monkeypatch.setattr(SharedBreaker, "closed_recheck", 0.0)

    async def calls():
        for _ in range(4):
            assert (await upstream("pool").aget("/item")).status_code == 200

    assert _watched_calls(redis_threads, calls) > 0
    assert sum(server.count("/item") for server in fakes[:2]) == 4
