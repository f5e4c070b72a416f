"""The async face runs the same steps as the sync face: the same scripts give
the same answers, errors and call-log rows (one logic underneath)."""
from __future__ import annotations

import asyncio
import gzip

import pytest
from asgiref.sync import async_to_sync
from django.core.cache import cache

from resilience import exceptions as errors
from resilience import upstream
from resilience.models import CallLog, Upstream
from resilience.telemetry.calllog import call_log_flush
from tests.support.fake_upstream import Reply

FIELDS = ("method", "path", "status", "outcome", "attempts", "cache_hit", "breaker_state")


def _rows() -> list[tuple]:
    call_log_flush()
    rows = list(CallLog.objects.order_by("id").values_list(*FIELDS))
    CallLog.objects.all().delete()
    return rows


def _sync(method: str, path: str, **kwargs):
    try:
        response = upstream("api").request(method, path, **kwargs)
    except errors.UpstreamError as err:
        return ("error", err.code, err.status)
    return ("ok", response.status_code, response.content, response.from_cache, response.stale,
            response.attempts)


def _async(method: str, path: str, **kwargs):
    async def call():
        try:
            response = await upstream("api").arequest(method, path, **kwargs)
        except errors.UpstreamError as err:
            return ("error", err.code, err.status)
        return ("ok", response.status_code, response.content, response.from_cache, response.stale,
                response.attempts)

    return async_to_sync(call)()


SCRIPTS = {
    "retries then success": ({}, [Reply(503), Reply(500), Reply(200, body={"v": 1})], ("GET", "/r")),
    "retries exhausted": ({}, [Reply(503), Reply(503), Reply(503)], ("GET", "/r")),
    "4xx not retried": ({}, [Reply(404, body={"e": 1})], ("GET", "/r")),
    "post is not retried after sending": ({}, [Reply(503), Reply(200)], ("POST", "/r")),
    "refused path": ({}, [], ("GET", "//evil.example/x")),
    "read timeout": ({"read_timeout": 0.1, "retry_total": 0}, [Reply(200, delay=0.5)], ("GET", "/r")),
    # The second retry's wait (4 s) cannot fit in the deadline: the same 2 attempts however busy the box.
    "deadline": ({"deadline": 2.0, "retry_backoff_factor": 2.0}, [Reply(503)] * 5, ("GET", "/r")),
    "stale on error": ({"cache_ttl": 1, "cache_serve_stale": True}, [Reply(200, body={"v": 1}), Reply(500)],
                       ("GET", "/r")),
}


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_both_faces_answer_and_log_alike(name, fake, make_upstream, monkeypatch):
    policy, replies, (method, path) = SCRIPTS[name]
    results, rows = {}, {}
    for face, run in (("sync", _sync), ("async", _async)):
        Upstream.objects.filter(name="api").delete()
        cache.clear()  # a fresh breaker and response cache for each face
        make_upstream(**policy)
        fake.reset()
        if replies:
            fake.script("/r", *replies, method=method)
        if name == "stale on error":
            first = run(method, path)
            from resilience.client import responses

            later = responses.wall_clock() + 5
            monkeypatch.setattr(responses, "wall_clock", lambda later=later: later)
            results[face] = (first, run(method, path))
            monkeypatch.undo()
        else:
            results[face] = run(method, path)
        rows[face] = _rows()
    assert results["sync"] == results["async"]
    assert rows["sync"] == rows["async"]


def test_the_breaker_opens_alike(fake, make_upstream):
    make_upstream(retry_total=0, breaker_fail_max=2)
    fake.script("/down", Reply(500))
    outcomes = [_async("GET", "/down")[1] for _ in range(3)]
    assert outcomes == ["upstream_http_error", "upstream_http_error", "breaker_open"]
    assert upstream("api").breaker.status()["state"] == "open"
    assert _sync("GET", "/down")[1] == "breaker_open"


def test_cache_and_single_flight_across_tasks(fake, make_upstream):
    make_upstream(cache_ttl=60)
    # A second: every task joins the flight before it ends, however slowly a busy box starts them
    # (each first loads the policy, one thread-sensitive hop after another; in CI under four test
    # processes 13 of 20 once came after 0.2 s and were cache hits).
    fake.script("/popular", Reply(200, body={"v": 1}, delay=1.0))

    async def burst():
        return await asyncio.gather(*(upstream("api").aget("/popular") for _ in range(20)))

    responses = async_to_sync(burst)()
    assert fake.count("/popular") == 1
    assert {r.json()["v"] for r in responses} == {1}
    assert sum(not r.shared for r in responses) == 1  # the leader; the rest shared its answer
    assert len({id(r) for r in responses}) == 20  # each caller its own response object
    assert _async("GET", "/popular")[3] is True  # then a cache hit
    outcomes = sorted(row[3] for row in _rows())
    assert outcomes == ["cache_hit", "ok"] + ["shared"] * 19


@pytest.mark.parametrize("encoded", [False, True])
def test_a_cache_hit_reads_as_the_answer_it_copies(fake, make_upstream, encoded):
    """The response a cache hit is made into (without reading its body through httpx2) reads as a
    fresh httpx2 response of the same body would: content, text, JSON, headers with the body's
    length and without the provider's encoding, closed, its request built when read."""
    import httpx2

    make_upstream(cache_ttl=60)
    payload = {"v": "caché " * 50}
    if encoded:
        raw = gzip.compress(__import__("json").dumps(payload).encode())
        fake.script("/hit", Reply(200, body=raw, headers={"Content-Type": "application/json",
                                                          "Content-Encoding": "gzip", "X-Kind": "k"}))
    else:
        fake.script("/hit", Reply(200, body=payload, headers={"X-Kind": "k"}))

    async def twice():
        first = await upstream("api").aget("/hit", params={"q": "1"})
        return first, await upstream("api").aget("/hit", params={"q": "1"})

    first, hit = async_to_sync(twice)()
    assert fake.count("/hit") == 1 and hit.from_cache and not first.from_cache
    fresh = httpx2.Response(200, headers=[(k, v) for k, v in first.headers.multi_items()
                                          if k not in ("content-encoding", "content-length")],
                            content=first.content)
    assert hit.headers.multi_items() == fresh.headers.multi_items()
    assert hit.headers["content-length"] == str(len(first.content)) and "content-encoding" not in hit.headers
    assert (hit.content, hit.text, hit.json()) == (first.content, first.text, payload)
    assert hit.is_closed and hit.is_stream_consumed and hit.reason_phrase == first.reason_phrase
    assert hit.request.method == "GET" and hit.request.url == first.request.url
    assert hit.request is hit.request  # built once


def test_a_streamed_async_call_reads_as_it_comes(fake, make_upstream):
    make_upstream()
    fake.script("/s", Reply(200, chunks=(b"one ", b"two ", b"three")))

    async def read():
        response = await upstream("api").aget("/s", stream=True)
        try:
            return b"".join([chunk async for chunk in response.aiter_bytes()])
        finally:
            await response.aclose()

    assert async_to_sync(read)() == b"one two three"


def test_aiter_body_passes_plain_chunks_through_and_decodes_encoded_ones(fake, make_upstream):
    """`aiter_body()`: the chunks as they come off the connection when the
    body is not encoded, decoded ones when it is; the connection is reused
    once the response is closed."""
    make_upstream()
    fake.script("/plain", Reply(200, chunks=(b"data: 1\n\n", b"data: 2\n\n")))
    packed = gzip.compress(b"x" * 5000)
    fake.script("/packed", Reply(200, body=packed, headers={"Content-Encoding": "gzip"}))

    async def read(path):
        response = await upstream("api").aget(path, stream=True)
        try:
            return [chunk async for chunk in response.aiter_body()]
        finally:
            await response.aclose()

    async def both():
        return await read("/plain"), await read("/packed")

    plain, packed_chunks = async_to_sync(both)()
    assert b"".join(plain) == b"data: 1\n\ndata: 2\n\n"
    assert b"".join(packed_chunks) == b"x" * 5000
    assert fake.connections == 1


def test_quiet_calls_share_one_connection_and_every_connection_comes_back(fake, make_upstream):
    """Newest first: one call at a time reuses one connection even with a
    large pool, and answers, streams closed unread and retried statuses all
    give their connection back."""
    make_upstream(pool_size=200, retry_total=1, retry_backoff_factor=0.01)
    fake.script("/ok", Reply(200, body={"v": 1}))
    fake.script("/s", Reply(200, chunks=(b"a", b"b")))
    fake.script("/flaky", Reply(503), Reply(200, body={"v": 2}))

    async def calls():
        client = upstream("api")
        for _ in range(5):
            await client.aget("/ok", cache=False)
        response = await client.aget("/s", stream=True)
        await response.aclose()  # closed before the body was read
        await client.aget("/flaky", cache=False)
        return client._live.current().apool.transport().in_use

    assert async_to_sync(calls)() == 0
    ok = [r for r in fake.requests if r.path == "/ok"]
    assert len({r.connection_id for r in ok}) == 1


def test_the_sync_client_loads_its_policy_lazily_on_an_event_loop(fake, make_upstream):
    from resilience.client import reset_clients

    make_upstream()
    fake.script("/x", Reply(200, body={"ok": True}))
    reset_clients()

    async def first_call():
        client = upstream("api")  # on the loop: no database access here
        return (await client.aget("/x")).json()

    assert async_to_sync(first_call)() == {"ok": True}


def test_on_the_loop_the_policy_is_checked_ahead_and_a_change_made_elsewhere_is_loaded(
        transactional_db, on_redis, fake, make_upstream, settings):
    """resilience.client.ahead: a call in the last quarter of POLICY_CHECK_INTERVAL starts the
    policy's check in a thread and goes on with the loaded policy; the check finds the version
    another worker moved and loads the change, so the next call has it without waiting."""
    from resilience.cache import default_cache
    from resilience.client import upstream_client
    from resilience.client.live import version_key

    settings.RESILIENCE = {**settings.RESILIENCE, "POLICY_CHECK_INTERVAL": 60}
    make_upstream(read_timeout=5.0)
    fake.script("/p", Reply(200, body={"v": 1}))
    live = upstream_client("api")._live

    async def run() -> list[float]:
        timeouts = [(await upstream("api").aget("/p")) and live.loaded().policy.read_timeout]
        await asyncio.to_thread(lambda: Upstream.objects.filter(name="api").update(read_timeout=7.0))
        default_cache().set(version_key("api"), "moved elsewhere", timeout=None)
        await upstream("api").aget("/p")
        timeouts.append(live.loaded().policy.read_timeout)  # early in the interval: not checked
        live._checked_at -= 50  # 50 of 60 s: in the last quarter
        await upstream("api").aget("/p")  # starts the check in a thread and goes on
        for _ in range(500):
            if live.loaded().policy.read_timeout == 7.0:
                break
            await asyncio.sleep(0.01)
        timeouts.append(live.loaded().policy.read_timeout)
        return timeouts

    assert async_to_sync(run)() == [5.0, 5.0, 7.0]
