"""The async client's network layer (resilience.client.aionet: httptools on
an asyncio protocol per connection, a pool of our own) against real servers
on loopback: plain and TLS connections, timeouts, refused and dropped
connections, flow control, bodies by length, chunks and EOF, streams cut or
stalled half-way, answers that are not HTTP, the pool's limit, and the
release each call's slot depends on."""
from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator

import httpx2
import pytest
import trustme
import uvloop

from resilience.client.aionet import READ_HIGH_WATER, Transport
from tests.support.fake_upstream import CUT, FakeUpstream, Reply


class Releases:
    """Counts the release callbacks a call runs (each must run exactly once)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def _request(url: str, *, read_timeout: float = 5.0, pool_timeout: float = 5.0) -> httpx2.Request:
    request = httpx2.Request("GET", url)
    request.extensions["timeout"] = {"connect": 5.0, "read": read_timeout, "write": 5.0, "pool": pool_timeout}
    return request


async def _fetch(transport: Transport, url: str, releases: Releases, **kwargs) -> tuple[int, bytes]:
    response = await transport.send(_request(url, **kwargs), releases)
    try:
        return response.status_code, await response.aread()
    finally:
        await response.aclose()


@contextlib.asynccontextmanager
async def _opened(**settings) -> AsyncIterator[Transport]:
    """A transport for one test, closed after it."""
    transport = Transport(**settings)
    try:
        yield transport
    finally:
        await transport.aclose()


async def _fetch_once(url: str, releases: Releases, **kwargs) -> tuple[int, bytes]:
    """One GET through a fresh transport (closed afterwards)."""
    async with _opened(max_connections=2, keepalive_expiry=5.0) as transport:  # the system's trust store
        return await _fetch(transport, url, releases, **kwargs)


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
        async with _opened(max_connections=4, keepalive_expiry=5.0) as transport:
            return [await _fetch(transport, fake.url + "/r", releases) for _ in range(3)]

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
        async with _opened(max_connections=2, keepalive_expiry=5.0, ssl_context=client_context) as transport:
            first = await _fetch(transport, tls_fake.url + "/secure", releases)
            second = await _fetch(transport, tls_fake.url + "/secure", releases)
            return first, second

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
        async with _opened(max_connections=1, keepalive_expiry=30.0) as transport:
            first = await _fetch(transport, fake.url + "/r", releases)
            fake.stop()  # drops the idle keep-alive connection
            fake.start()  # same port
            await asyncio.sleep(0.2)  # the loop reads the EOF
            second = await _fetch(transport, fake.url + "/r", releases)
            return first, second

    assert run_loop(run()) == ((200, b"ok"), (200, b"ok"))
    assert fake.count("/r") == 2


def test_a_body_larger_than_the_read_buffer_arrives_whole(fake, run_loop):
    """Reading pauses past READ_HIGH_WATER and resumes as the reader drains it."""
    body = bytes(range(256)) * (4 * READ_HIGH_WATER // 256 + 7)
    fake.script("/big", Reply(200, body=body))
    releases = Releases()

    async def run():
        async with _opened(max_connections=1, keepalive_expiry=5.0) as transport:
            response = await transport.send(_request(fake.url + "/big"), releases)
            await asyncio.sleep(0.3)  # let the whole body arrive before reading: the buffer fills up
            received = b"".join([chunk async for chunk in response.aiter_raw()])
            await response.aclose()
            again = await _fetch(transport, fake.url + "/big", releases)
            return received, again

    received, again = run_loop(run())
    assert received == body
    assert again == (200, body)
    assert fake.connections == 1
    assert releases.count == 2


def test_more_concurrent_requests_than_connections_wait_and_all_succeed(fake, run_loop):
    fake.script("/r", Reply(200, body="ok", delay=0.05))
    releases = Releases()

    async def run():
        async with _opened(max_connections=3, keepalive_expiry=5.0) as transport:
            return await asyncio.gather(*(_fetch(transport, fake.url + "/r", releases) for _ in range(24)))

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
        async with _opened(max_connections=1, keepalive_expiry=5.0) as transport:
            return [await post(transport, body) for body in (small, large, small)]

    assert run_loop(run()) == [(200, b"got it")] * 3
    assert [recorded.body for recorded in fake.requests] == [small, large, small]
    assert fake.connections == 1
    assert releases.count == 3


def test_a_request_the_pool_cannot_send_is_httpx_error_and_releases(run_loop):
    releases = Releases()

    async def run():
        async with _opened(max_connections=1, keepalive_expiry=5.0) as transport:
            await transport.send(_request("ftp://127.0.0.1:1/file"), releases)

    with pytest.raises(httpx2.UnsupportedProtocol):
        run_loop(run())
    assert releases.count == 1


class RawServer:
    """A server on 127.0.0.1 in the test's own loop that answers each
    connection's requests with the bytes `answer(request_head)` gives, then
    closes it if `close_after` (a provider that frames by hand)."""

    def __init__(self, answer, *, close_after: bool = False) -> None:
        self.answer = answer
        self.close_after = close_after
        self.connections = 0
        self.server: asyncio.base_events.Server | None = None

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc) -> None:
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                writer.write(self.answer(head))
                await writer.drain()
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def test_chunked_and_eof_delimited_bodies_arrive_whole(run_loop):
    """A chunked body is de-chunked; a body with neither length nor chunks ends
    with the connection, which is then not reused."""
    chunked = RawServer(lambda head: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                     b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    until_eof = RawServer(lambda head: b"HTTP/1.1 200 OK\r\n\r\nall of it", close_after=True)
    releases = Releases()

    async def run():
        async with _opened(max_connections=2, keepalive_expiry=5.0) as transport:
            async with chunked as url:
                by_chunks = [await _fetch(transport, url + "/c", releases) for _ in range(2)]
            async with until_eof as url:
                by_eof = [await _fetch(transport, url + "/e", releases) for _ in range(2)]
            return by_chunks, by_eof

    by_chunks, by_eof = run_loop(run())
    assert by_chunks == [(200, b"hello world")] * 2
    assert chunked.connections == 1
    assert by_eof == [(200, b"all of it")] * 2
    assert until_eof.connections == 2
    assert releases.count == 4


def test_an_interim_answer_is_skipped_for_the_final_one(run_loop):
    server = RawServer(lambda head: b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
                                    b"HTTP/1.1 201 Created\r\nContent-Length: 4\r\nX-Final: yes\r\n\r\ndone")
    releases = Releases()

    async def run():
        async with _opened(max_connections=1, keepalive_expiry=5.0) as transport, server as url:
            response = await transport.send(_request(url + "/x"), releases)
            body = await response.aread()
            await response.aclose()
            return response, body

    response, body = run_loop(run())
    assert (response.status_code, response.reason_phrase, body) == (201, "Created", b"done")
    assert response.headers["x-final"] == "yes"
    assert "link" not in response.headers
    assert releases.count == 1


def test_a_stream_cut_half_way_is_a_protocol_error_and_the_next_call_reconnects(fake, run_loop):
    fake.script("/cut", Reply(200, chunks=(b"data: 1\n\n", CUT)))
    fake.script("/ok", Reply(200, body="fine"))
    releases = Releases()

    async def run():
        async with _opened(max_connections=1, keepalive_expiry=5.0) as transport:
            response = await transport.send(_request(fake.url + "/cut"), releases)
            received = []
            try:
                async for chunk in response.aiter_raw():
                    received.append(chunk)
            except httpx2.RemoteProtocolError as err:
                cut = err
            finally:
                await response.aclose()
            return received, cut, await _fetch(transport, fake.url + "/ok", releases)

    received, cut, after = run_loop(run())
    assert received == [b"data: 1\n\n"]
    assert "without sending complete message body" in str(cut)
    assert after == (200, b"fine")
    assert fake.connections == 2
    assert releases.count == 2


def test_a_stream_stalled_after_its_first_chunk_times_out_between_bytes(fake, run_loop):
    fake.script("/stall", Reply(200, chunks=(b"data: 1\n\n", 3.0, b"data: 2\n\n")))
    releases = Releases()

    async def run():
        async with _opened(max_connections=1, keepalive_expiry=5.0) as transport:
            response = await transport.send(_request(fake.url + "/stall", read_timeout=0.3), releases)
            received = []
            try:
                with pytest.raises(httpx2.ReadTimeout):
                    async for chunk in response.aiter_raw():
                        received.append(chunk)
            finally:
                await response.aclose()
            return received

    assert run_loop(run()) == [b"data: 1\n\n"]
    assert releases.count == 1


def test_an_answer_that_is_not_http_is_a_protocol_error(fake, run_loop):
    fake.script("/junk", Reply(malformed=True))
    releases = Releases()

    with pytest.raises(httpx2.RemoteProtocolError, match="malformed"):
        run_loop(_fetch_once(fake.url + "/junk", releases))
    assert releases.count == 1


def test_a_connection_reset_before_the_answer_is_a_protocol_error(fake, run_loop):
    fake.script("/rst", Reply(reset=True))
    releases = Releases()

    with pytest.raises((httpx2.RemoteProtocolError, httpx2.ReadError)):
        run_loop(_fetch_once(fake.url + "/rst", releases))
    assert releases.count == 1


def test_a_body_closed_before_its_end_closes_its_connection(fake, run_loop):
    """Bytes left unread must not become the next call's answer."""
    fake.script("/long", Reply(200, chunks=(b"first", 0.2, b"second")))
    fake.script("/ok", Reply(200, body="fine"))
    releases = Releases()

    async def run():
        async with _opened(max_connections=1, keepalive_expiry=5.0) as transport:
            response = await transport.send(_request(fake.url + "/long"), releases)
            async for _chunk in response.aiter_raw():
                break
            await response.aclose()
            return await _fetch(transport, fake.url + "/ok", releases)

    assert run_loop(run()) == (200, b"fine")
    assert fake.connections == 2
    assert releases.count == 2


def test_connection_close_and_idle_expiry_are_not_reused(fake, run_loop):
    fake.script("/bye", Reply(200, body="bye", close=True))
    fake.script("/r", Reply(200, body="ok"))
    releases = Releases()

    async def run():
        async with _opened(max_connections=1, keepalive_expiry=0.2) as transport:
            answers = [await _fetch(transport, fake.url + "/bye", releases),
                       await _fetch(transport, fake.url + "/r", releases)]  # a new connection
            answers.append(await _fetch(transport, fake.url + "/r", releases))  # reused
            await asyncio.sleep(0.4)  # past the keep-alive expiry
            answers.append(await _fetch(transport, fake.url + "/r", releases))  # a new one again
            return answers

    assert run_loop(run()) == [(200, b"bye"), (200, b"ok"), (200, b"ok"), (200, b"ok")]
    assert fake.connections == 3
    assert releases.count == 4


def test_a_head_answer_has_no_body_whatever_its_length_says(fake, run_loop):
    fake.script("/h", Reply(200, body="a body HEAD must not read"), method="HEAD")
    fake.script("/r", Reply(200, body="ok"))
    releases = Releases()

    async def run():
        async with _opened(max_connections=1, keepalive_expiry=5.0) as transport:
            request = _request(fake.url + "/h")
            request.method = "HEAD"
            response = await transport.send(request, releases)
            body = await response.aread()
            await response.aclose()
            after = await _fetch(transport, fake.url + "/r", releases)
            return response.headers["content-length"], body, after

    length, body, after = run_loop(run())
    assert int(length) > 0
    assert body == b""
    assert after == (200, b"ok")
    assert releases.count == 2


def test_a_caller_past_the_pool_waits_its_pool_timeout_then_gets_pool_timeout(fake, run_loop):
    fake.script("/slow", Reply(200, body="late", delay=1.0))
    releases = Releases()

    async def run():
        async with _opened(max_connections=1, keepalive_expiry=5.0) as transport:
            holder = asyncio.ensure_future(_fetch(transport, fake.url + "/slow", releases))
            await asyncio.sleep(0.1)
            request = _request(fake.url + "/slow")
            request.extensions["timeout"] = {**request.extensions["timeout"], "pool": 0.2}
            with pytest.raises(httpx2.PoolTimeout):
                await transport.send(request, releases)
            return await holder

    assert run_loop(run()) == (200, b"late")
    assert fake.connections == 1
    assert releases.count == 2


def test_a_cancelled_waiter_passes_its_turn_on(fake, run_loop):
    """A caller cancelled (its deadline) just after the pool woke it for a
    freed connection does not take its turn with it: the next one in line
    gets the connection, instead of waiting out its pool timeout."""
    fake.script("/r", Reply(200, body="ok", delay=0.2))
    releases = Releases()

    async def run():
        waiting: list[asyncio.Future] = []

        def release_then_cancel_the_woken() -> None:  # runs right after the pool wakes `doomed`
            releases()
            waiting[0].cancel()

        async with _opened(max_connections=1, keepalive_expiry=5.0) as transport:
            response = await transport.send(_request(fake.url + "/r"), release_then_cancel_the_woken)
            doomed = asyncio.ensure_future(_fetch(transport, fake.url + "/r", releases))
            patient = asyncio.ensure_future(_fetch(transport, fake.url + "/r", releases, pool_timeout=2.0))
            waiting.append(doomed)
            await asyncio.sleep(0.05)  # both wait for the one connection
            first = await response.aread()
            await response.aclose()
            return first, await patient, doomed.cancelled()

    assert run_loop(run()) == (b"ok", (200, b"ok"), True)
    assert releases.count == 3


def test_a_header_with_a_line_break_is_refused_before_anything_is_sent(fake, run_loop):
    releases = Releases()

    async def run():
        async with _opened(max_connections=1, keepalive_expiry=5.0) as transport:
            request = _request(fake.url + "/r")
            request.headers["X-Smuggled"] = "a\r\nX-Other: b"
            await transport.send(request, releases)

    with pytest.raises(httpx2.LocalProtocolError, match="line break"):
        run_loop(run())
    assert fake.count() == 0
    assert releases.count == 1


def test_a_connection_given_back_with_its_reading_paused_reads_again(fake, run_loop):
    """A body just past READ_HIGH_WATER arrives whole with reading paused; closed
    unread, its connection goes back to the pool and must read the next answer."""
    body = b"x" * (READ_HIGH_WATER + 1000)
    fake.script("/big", Reply(200, body=body))
    fake.script("/r", Reply(200, body="ok"))
    releases = Releases()

    async def run():
        async with _opened(max_connections=1, keepalive_expiry=5.0) as transport:
            response = await transport.send(_request(fake.url + "/big"), releases)
            await asyncio.sleep(0.3)  # the whole body arrives; reading pauses past the high water
            await response.aclose()
            return await _fetch(transport, fake.url + "/r", releases, read_timeout=2.0)

    assert run_loop(run()) == (200, b"ok")
    assert releases.count == 2


def test_a_read_within_a_wait_names_which_timer_ran_out(fake, run_loop):
    """`next_within` (what the stream supervisor reads with): a chunk already here comes at once,
    the caller's wait running out first is TimeoutError, the read timeout first is ReadTimeout,
    and the end is StopAsyncIteration."""
    fake.script("/slow", Reply(200, chunks=(b"data: 1\n\n", b"data: 2\n\n", 1.0, b"data: 3\n\n")))
    releases = Releases()

    async def run():
        async with _opened(max_connections=1, keepalive_expiry=5.0) as transport:
            outcomes = []
            for wait, read_timeout in ((0.2, 5.0), (5.0, 0.2)):
                request = _request(fake.url + "/slow", read_timeout=read_timeout)
                response = await transport.send(request, releases)
                try:
                    body = response.stream
                    received = b""
                    while b"data: 2" not in received:  # both may come in one read
                        received += await body.next_within(5.0)
                    try:
                        await body.next_within(wait)
                    except (TimeoutError, httpx2.ReadTimeout) as err:
                        outcomes.append(type(err))
                finally:
                    await response.aclose()
            response = await transport.send(_request(fake.url + "/slow"), releases)
            try:
                chunks = []
                with pytest.raises(StopAsyncIteration):
                    while True:
                        chunks.append(await response.stream.next_within(5.0))
                outcomes.append(b"".join(chunks))
                outcomes.append(response.stream.arrived)
            finally:
                await response.aclose()
            return outcomes

    assert run_loop(run()) == [TimeoutError, httpx2.ReadTimeout, b"data: 1\n\ndata: 2\n\ndata: 3\n\n", True]
    assert releases.count == 3


def test_a_body_that_arrived_whole_says_so_before_it_is_read(fake, run_loop):
    """`arrived` (asend reads such a body without arming its deadline timer): true for an answer whose
    body came with its headers, false for one still arriving."""
    fake.script("/whole", Reply(200, body=b'{"ok": true}'))
    fake.script("/later", Reply(200, chunks=(b"data: 1\n\n", 0.5, b"data: 2\n\n")))
    releases = Releases()

    async def run():
        async with _opened(max_connections=1, keepalive_expiry=5.0) as transport:
            seen = []
            for path in ("/whole", "/later"):
                response = await transport.send(_request(fake.url + path), releases)
                try:
                    if not response.stream.arrived:  # the head and the body may be two reads apart
                        await asyncio.sleep(0.05)
                    seen.append(response.stream.arrived)
                    seen.append(await response.aread())
                finally:
                    await response.aclose()
            return seen

    whole_arrived, whole, later_arrived, later = run_loop(run())
    assert (whole_arrived, whole) == (True, b'{"ok": true}')
    assert (later_arrived, later) == (False, b"data: 1\n\ndata: 2\n\n")
    assert releases.count == 2
