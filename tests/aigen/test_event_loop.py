"""The async path never blocks the event loop (issue 25, item 6).

A generation (POST /api/ai/generate) and a /v1 chat completion run through
the project's ASGI application on a loop in asyncio's debug mode with a
slow-callback threshold of 80 ms, while Redis (the cache, the throttles, the
single-flight locks) sits behind a fault proxy that delays every chunk by
50 ms: any sync cache or lock call left on the loop takes longer than the
threshold, asyncio logs it, and the test fails naming it. And whatever its
speed, no Redis command may be sent from the loop's thread: the django-redis
client's connection pool (`get_connection`, which every command goes
through) notes the thread of each, and the test fails on any sent from the
loop's (on the plain and streamed paths, with the cache step and without,
single-flight included).
"""
from __future__ import annotations

import asyncio
import gc
import logging
import secrets
import threading
from urllib.parse import urlsplit

import httpx2
import openai
import pytest
from asgiref.sync import async_to_sync

from aigen.edge import openai as openai_views
from aigen.edge.tokens import users
from resilience.cache import default_cache, reset_engines
from resilience.client import reset_clients
from resilience.models import Upstream
from tests.aigen.conftest import FAST_OPENAI
from tests.support.fake_openai import CONTENT_PREFIX, MODEL_ID
from tests.support.faultproxy import FaultProxy
from tests.support.roles import user_token

pytestmark = pytest.mark.django_db(transaction=True)

#: asyncio's slow_callback_duration. A step that waited on Redis takes a round trip, at least
#: 2 x REDIS_DELAY (100 ms); a step that only computes can take tens of milliseconds of wall time
#: when four test processes share two cores (`make test`'s workers, twice in CI: 25-40 ms seen).
THRESHOLD = 0.08
REDIS_DELAY = 0.05  # per chunk, each way: every Redis round trip > THRESHOLD


@pytest.fixture
def slow_redis(redis_url, settings):
    parts = urlsplit(redis_url)
    with FaultProxy(parts.hostname, parts.port or 6379) as proxy:
        settings.CACHES = {"default": {
            "BACKEND": "resilience.cache.FallbackCache", "LOCATION": f"redis://{proxy.address}{parts.path}",
            "KEY_PREFIX": f"loop{secrets.token_hex(4)}",
            "OPTIONS": {"PROBE_INTERVAL": 30.0, "SOCKET_CONNECT_TIMEOUT": 2.0, "SOCKET_TIMEOUT": 2.0,
                        "STATS_FLUSH_INTERVAL": 3600.0}}}
        reset_engines()
        proxy.latency(REDIS_DELAY)
        yield proxy
    reset_engines()


@pytest.fixture
def served(slow_redis, openai_fake, settings, user):
    settings.AIGEN = {**settings.AIGEN, "GENERATE_THROTTLE": "100000/min"}
    Upstream.objects.update_or_create(name="llm", defaults={
        "base_url": openai_fake.url, **FAST_OPENAI, "served_models": [MODEL_ID]})
    reset_clients()
    openai_views.models.clear()
    users.clear()
    return user_token(user)


def _watch_redis_threads(monkeypatch) -> list[int]:
    """The thread of every Redis command sent from now on (the cache engine's
    connection pools: every command takes a connection there)."""
    redis = default_cache().engine.redis
    pools = {id(pool): pool for pool in (redis.client.get_client(write=True).connection_pool,
                                         redis.client.get_client(write=False).connection_pool)}
    threads: list[int] = []
    for pool in pools.values():
        original = pool.get_connection

        def watched(*args, original=original, **kwargs):
            threads.append(threading.get_ident())
            return original(*args, **kwargs)

        monkeypatch.setattr(pool, "get_connection", watched)
    return threads


def _on_a_debug_loop(work, monkeypatch) -> list[str]:
    """Run `work(http)` twice: once to warm up (first-use costs such as building
    the provider's SDK client are CPU, not waits, and happen once per process),
    then on a loop in debug mode; the slow-callback warnings of that run, and
    a line for each Redis command it sent from the loop's thread."""
    from project.asgi import application

    redis_threads = _watch_redis_threads(monkeypatch)
    loop_thread: list[int] = []
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("asyncio")
    logger.addHandler(handler)

    async def go():
        async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=application),
                                      base_url="http://testserver") as http:
            await work(http)
            loop = asyncio.get_running_loop()
            loop.slow_callback_duration = THRESHOLD
            # A collection of the whole suite's heap can pause a callback for a quarter of a
            # second: that is the collector, not a wait on the loop. Collected before, off during.
            gc.collect()
            gc.disable()
            # Warm, a plain /v1 call may find every shared copy fresh (tokens, policy, breakers)
            # and send no Redis command at all: forgetting the kept token users makes the run's
            # first call read the tokens' generation from Redis (in a thread), so there is one.
            users.clear()
            loop.set_debug(True)
            records.clear()
            redis_threads.clear()
            loop_thread.append(threading.get_ident())
            try:
                await work(http)
            finally:
                loop.set_debug(False)
                # The step that resumed from the run's last await is still measured: the collection
                # that re-enabling the collector starts (every object the run allocated is young)
                # belongs to the next one, which is not.
                await asyncio.sleep(0)
                gc.enable()

    try:
        async_to_sync(go)()
    finally:
        logger.removeHandler(handler)
    assert redis_threads, "the run sent no Redis command: nothing was checked"
    on_loop = [f"a Redis command sent from the loop's thread ({n + 1})"
               for n, thread in enumerate(t for t in redis_threads if t == loop_thread[0])]
    return [r.getMessage() for r in records if "took" in r.getMessage()] + on_loop


def test_a_generation_never_blocks_the_loop(served, section2_data, monkeypatch):
    body = {"template_id": "emergency_plan", "section_id": "2", "data": section2_data}

    async def work(http):
        for use_cache in (True, True, False):  # a miss, a hit, a refresh
            response = await http.post("/api/ai/generate", headers={"Authorization": f"Bearer {served}"},
                                       json={**body, "use_cache": use_cache})
            assert response.status_code == 200, response.text
        streamed = await http.post("/api/ai/generate", headers={"Authorization": f"Bearer {served}"},
                                   json={**body, "use_cache": False, "stream": True})
        assert "event: done" in streamed.text, streamed.text

    assert _on_a_debug_loop(work, monkeypatch) == []


def test_a_v1_completion_never_blocks_the_loop(served, monkeypatch):
    async def work(http):
        client = openai.AsyncOpenAI(api_key=served, base_url="http://testserver/v1", http_client=http,
                                    max_retries=0)
        answer = await client.chat.completions.create(model=MODEL_ID,
                                                      messages=[{"role": "user", "content": "hi"}])
        assert answer.choices[0].message.content == CONTENT_PREFIX + "hi"
        stream = await client.chat.completions.create(model=MODEL_ID, stream=True,
                                                      messages=[{"role": "user", "content": "hi"}])
        assert "".join([c.delta.content or "" async for chunk in stream for c in chunk.choices]) \
            == CONTENT_PREFIX + "hi"

    assert _on_a_debug_loop(work, monkeypatch) == []


def test_cached_v1_completions_never_block_the_loop(served, openai_fake, monkeypatch):
    """With the cache step: a burst of identical calls (one leader, the others
    single-flighted), then a hit, on both front doors."""
    Upstream.objects.filter(name="llm").update(cache_ttl=60, cache_methods=["POST"], single_flight=True)
    reset_clients()

    async def work(http):
        client = openai.AsyncOpenAI(api_key=served, base_url="http://testserver/v1", http_client=http,
                                    max_retries=0)
        question = [{"role": "user", "content": f"cached {secrets.token_hex(4)}"}]
        served_before = openai_fake.chat_calls
        burst = await asyncio.gather(*(client.chat.completions.create(model=MODEL_ID, messages=question)
                                       for _ in range(4)))
        again = await client.chat.completions.create(model=MODEL_ID, messages=question)
        expected = CONTENT_PREFIX + question[0]["content"]
        assert {a.choices[0].message.content for a in [*burst, again]} == {expected}
        assert openai_fake.chat_calls == served_before + 1  # one leader; the rest shared or cached
        answered = await http.post("/v1/messages", headers={"x-api-key": served}, json={
            "model": MODEL_ID, "max_tokens": 16, "messages": question})
        assert answered.status_code == 200, answered.text

    assert _on_a_debug_loop(work, monkeypatch) == []
