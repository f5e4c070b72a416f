"""The async client's network layer (resilience.client.aionet) against real
servers on loopback: plain and TLS connections, timeouts, refused and dropped
connections, flow control, and the release each call's slot depends on."""
from __future__ import annotations

import asyncio
import ssl

import httpx2
import pytest
import trustme
import uvloop

from resilience.client.aionet import READ_HIGH_WATER, Transport
from tests.support.fake_upstream import FakeUpstream, Reply


class Releases:
    """Counts the release callbacks a call runs (each must run exactly once)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def _request(url: str, *, read_timeout: float = 5.0) -> httpx2.Request:
    request = httpx2.Request("GET", url)
    request.extensions["timeout"] = {"connect": 5.0, "read": read_timeout, "write": 5.0, "pool": 5.0}
    return request


async def _fetch(transport: Transport, url: str, releases: Releases, **kwargs) -> tuple[int, bytes]:
    response = await transport.send(_request(url, **kwargs), releases)
    try:
        return response.status_code, await response.aread()
    finally:
        await response.aclose()


async def _fetch_once(url: str, releases: Releases, **kwargs) -> tuple[int, bytes]:
    """One GET through a fresh transport (closed afterwards)."""
    transport = Transport(max_connections=2, keepalive_expiry=5.0)  # the system's trust store
    try:
        return await _fetch(transport, url, releases, **kwargs)
    finally:
        await transport.aclose()


@pytest.fixture(params=["asyncio", "uvloop"])
def run_loop(request):
    """Each test on both loops: asyncio's (tests, runserver) and uvloop (`make serve`)."""
    return asyncio.run if request.param == "asyncio" else uvloop.run


@pytest.fixture(scope="module")
def authority():
    return trustme.CA()


@pytest.fixture
def tls_fake(authority):
    server = FakeUpstream()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    server.tls = context
    with server:
        yield server


def test_plain_requests_reuse_one_connection(fake, run_loop):
    fake.script("/r", Reply(200, body={"ok": True}))
    releases = Releases()

    async def run():
        transport = Transport(max_connections=4, keepalive_expiry=5.0)
        try:
            return [await _fetch(transport, fake.url + "/r", releases) for _ in range(3)]
        finally:
            await transport.aclose()

    answers = run_loop(run())
    assert answers == [(200, b'{"ok": true}')] * 3
    assert fake.connections == 1
    assert releases.count == 3


def test_tls_round_trip_verifies_and_reuses_the_connection(tls_fake, authority, run_loop):
    tls_fake.script("/secure", Reply(200, body="over TLS"))
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    releases = Releases()

    async def run():
        transport = Transport(max_connections=2, keepalive_expiry=5.0, ssl_context=client_context)
        try:
            first = await _fetch(transport, tls_fake.url + "/secure", releases)
            second = await _fetch(transport, tls_fake.url + "/secure", releases)
            return first, second
        finally:
            await transport.aclose()

    first, second = run_loop(run())
    assert tls_fake.url.startswith("https://")
    assert first == second == (200, b"over TLS")
    assert tls_fake.connections == 1
    assert releases.count == 2


def test_tls_certificate_from_an_unknown_authority_is_refused(tls_fake, run_loop):
    releases = Releases()

    with pytest.raises(httpx2.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        run_loop(_fetch_once(tls_fake.url + "/secure", releases))
    assert tls_fake.count() == 0
    assert releases.count == 1


def test_read_timeout_is_httpx_read_timeout_and_releases(fake, run_loop):
    fake.script("/slow", Reply(200, delay=2.0))
    releases = Releases()

    with pytest.raises(httpx2.ReadTimeout):
        run_loop(_fetch_once(fake.url + "/slow", releases, read_timeout=0.2))
    assert releases.count == 1


def test_refused_connection_is_a_connect_error(fake, run_loop):
    url = fake.url
    fake.stop()
    releases = Releases()

    with pytest.raises(httpx2.ConnectError):
        run_loop(_fetch_once(url + "/gone", releases))
    assert releases.count == 1


def test_a_connection_the_server_dropped_while_idle_is_not_reused(fake, run_loop):
    """The pooled connection's EOF is seen from the protocol's state: the next
    request opens a new connection instead of failing on the dead one."""
    fake.script("/r", Reply(200, body="ok"))
    releases = Releases()

    async def run():
        transport = Transport(max_connections=1, keepalive_expiry=30.0)
        try:
            first = await _fetch(transport, fake.url + "/r", releases)
            fake.stop()  # drops the idle keep-alive connection
            fake.start()  # same port
            await asyncio.sleep(0.2)  # the loop reads the EOF
            second = await _fetch(transport, fake.url + "/r", releases)
            return first, second
        finally:
            await transport.aclose()

    assert run_loop(run()) == ((200, b"ok"), (200, b"ok"))
    assert fake.count("/r") == 2


def test_a_body_larger_than_the_read_buffer_arrives_whole(fake, run_loop):
    """Reading pauses past READ_HIGH_WATER and resumes as the reader drains it."""
    body = bytes(range(256)) * (4 * READ_HIGH_WATER // 256 + 7)
    fake.script("/big", Reply(200, body=body))
    releases = Releases()

    async def run():
        transport = Transport(max_connections=1, keepalive_expiry=5.0)
        try:
            response = await transport.send(_request(fake.url + "/big"), releases)
            await asyncio.sleep(0.3)  # let the whole body arrive before reading: the buffer fills up
            received = b"".join([chunk async for chunk in response.aiter_raw()])
            await response.aclose()
            again = await _fetch(transport, fake.url + "/big", releases)
            return received, again
        finally:
            await transport.aclose()

    received, again = run_loop(run())
    assert received == body
    assert again == (200, body)
    assert fake.connections == 1
    assert releases.count == 2


def test_more_concurrent_requests_than_connections_wait_and_all_succeed(fake, run_loop):
    fake.script("/r", Reply(200, body="ok", delay=0.05))
    releases = Releases()

    async def run():
        transport = Transport(max_connections=3, keepalive_expiry=5.0)
        try:
            return await asyncio.gather(*(_fetch(transport, fake.url + "/r", releases) for _ in range(24)))
        finally:
            await transport.aclose()

    assert run_loop(run()) == [(200, b"ok")] * 24
    assert fake.connections <= 3
    assert fake.max_concurrent <= 3
    assert releases.count == 24


def test_small_and_large_request_bodies_arrive_whole_over_one_connection(fake, run_loop):
    """A body far past the transport's write buffer goes out whole, in order,
    under flow control (the writer waits for the buffer to drain)."""
    fake.script("/in", Reply(200, body="got it"))
    small = b'{"hello": "world"}'
    large = bytes(range(256)) * (3 * 1024 * 1024 // 256)
    releases = Releases()

    async def post(transport: Transport, body: bytes) -> tuple[int, bytes]:
        request = httpx2.Request("POST", fake.url + "/in", content=body)
        request.extensions["timeout"] = {"connect": 5.0, "read": 5.0, "write": 5.0, "pool": 5.0}
        response = await transport.send(request, releases)
        try:
            return response.status_code, await response.aread()
        finally:
            await response.aclose()

    async def run():
        transport = Transport(max_connections=1, keepalive_expiry=5.0)
        try:
            return [await post(transport, body) for body in (small, large, small)]
        finally:
            await transport.aclose()

    assert run_loop(run()) == [(200, b"got it")] * 3
    assert [recorded.body for recorded in fake.requests] == [small, large, small]
    assert fake.connections == 1
    assert releases.count == 3


def test_a_request_the_pool_cannot_send_is_httpx_error_and_releases(run_loop):
    releases = Releases()

    async def run():
        transport = Transport(max_connections=1, keepalive_expiry=5.0)
        try:
            await transport.send(_request("ftp://127.0.0.1:1/file"), releases)
        finally:
            await transport.aclose()

    with pytest.raises(httpx2.UnsupportedProtocol):
        run_loop(run())
    assert releases.count == 1
