"""The async client's network layer: HTTP/1.1 connections to a provider,
httptools' parser (llhttp, C) on one `asyncio.Protocol` per connection, and
a pool of them (uvloop under `make serve`).

Why our own (issue 30, measured): the front door's call was mostly this
layer. httpcore2's pool and h11 on our asyncio backend (now
`bench/httpcore_contender.py`) cost 350-430 µs of CPU per completion and
475-560 µs per stream of 10 chunks; aiohttp, behind the same interface
(`bench/aiohttp_contender.py`), saved a quarter of that and spent most of it
again in its request machinery. This transport costs 0.37 of httpcore2's per
completion and 0.46 per stream. This module does what the front door needs and no more: a
connection is a protocol whose `data_received` feeds the parser, whose
callbacks fill the response's header list and body queue; a call writes its
request in one `write` and waits on one future. `python -m bench.bench_aionet`
prices the three side by side; the README's "The HTTP/1.1 client to the
provider" has the figures.

What it keeps from httpcore2's pool: `send(request, on_close)` with the same
timeouts (`request.extensions["timeout"]`: connect, read between bytes,
write, pool), httpx2's error types (`ConnectError`, `ConnectTimeout`,
`ReadTimeout`, `WriteError`, `RemoteProtocolError`, `PoolTimeout`,
`UnsupportedProtocol`), at most `max_connections` open, idle connections
reused newest first and closed after `keepalive_expiry`, a connection the
server closed while idle never reused, and a body not read to its end closing
its connection rather than poisoning the next call. Plain HTTP and TLS;
no proxies, no HTTP/2, no `Expect: 100-continue` (the client sends none).
"""
from __future__ import annotations

import asyncio
import functools
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpcore2
import httptools
import httpx2

#: Bytes of a response body buffered before reading from its socket pauses.
READ_HIGH_WATER = 256 * 1024

_DEFAULT_PORTS = {b"http": 80, b"https": 443}


@functools.cache
def default_ssl_context() -> ssl.SSLContext:
    """One verifying context per process (httpx2's: the system's trust store):
    loading the CA store takes tens of milliseconds, with the loop blocked, and
    every upstream's pool on every loop would load its own."""
    return httpcore2.default_ssl_context(_trust_env=False)


class _Connection(asyncio.Protocol):
    """One keep-alive connection: its parser, the response being read, and
    the one waiter (a call waiting for headers, a body chunk, or a drain)."""

    def __init__(self, pool: Transport, key: tuple[bytes, bytes, int]) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.idle_since = 0.0
        self.in_use = False
        self.reusable = True
        self.closed = False
        self.error: BaseException | None = None
        self._waiter: asyncio.Future[bool] | None = None
        self.writing_paused = False
        self.reading_paused = False
        self._begin_response()

    def _begin_response(self) -> None:
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.body: deque[bytes] = deque()
        self.buffered = 0
        self.complete = False
        self.skip_body = False
        self.until_eof = False  # no length, not chunked: the body ends with the connection
        if self.reading_paused and self.transport is not None:  # the last answer's unread rest
            self.reading_paused = False
            self.transport.resume_reading()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.in_use:  # bytes nobody asked for: the connection cannot be trusted again
            self.reusable = False
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as err:
            self.error = httpx2.RemoteProtocolError(f"malformed response: {err}")
            self.reusable = False
        self._wake()

    def eof_received(self) -> bool:
        self._lost(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost(exc)

    def _lost(self, exc: Exception | None) -> None:
        self.reusable = False
        if exc is None and self.until_eof and self.headers_done:
            self.complete = True
        if not self.closed:
            self.closed = True
            if self.error is None and exc is not None:
                self.error = httpx2.ReadError(str(exc) or type(exc).__name__)
            self.pool._forget(self)
        self._wake()

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._wake()

    # httptools' callbacks
    def on_message_begin(self) -> None:
        if self.complete:  # a second answer to one request: never reuse this connection
            self.reusable = False

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if 100 <= self.status < 200 and self.status != 101:  # an interim answer: the real one follows
            self.reason, self.headers = b"", []
            return
        self.headers_done = True
        if self.status not in (204, 304) and not any(
                name.lower() in (b"content-length", b"transfer-encoding") for name, _ in self.headers):
            self.until_eof = True
            self.reusable = False
        if self.skip_body:  # HEAD: no body follows, whatever the headers say
            self.complete = True
            self.reusable = False  # the parser would wait for the body the headers announce

    def on_body(self, body: bytes) -> None:
        if self.skip_body:
            return
        self.body.append(body)
        self.buffered += len(body)
        if self.buffered > READ_HIGH_WATER and not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if self.status < 200:
            return
        self.complete = True
        if not self.parser.should_keep_alive():
            self.reusable = False

    # the call's side
    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    async def wait(self, timeout: float | None) -> bool:
        """Until something arrives (bytes, EOF, a drained buffer): False on timeout."""
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = None if timeout is None else loop.call_later(max(timeout, 0.0), _expire, waiter)
        try:
            return await waiter
        finally:
            if timer is not None:
                timer.cancel()
            self._waiter = None

    def take(self) -> bytes:
        chunk = self.body.popleft()
        self.buffered -= len(chunk)
        if self.reading_paused and self.buffered <= READ_HIGH_WATER // 4 and self.transport is not None:
            self.reading_paused = False
            self.transport.resume_reading()
        return chunk

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()
        if not self.closed:
            self.closed = True
            self.pool._forget(self)


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


class _Body(httpx2.AsyncByteStream):
    """A response's body as it arrives on its connection; closing it gives the
    connection back (read to its end, reusable) or closes it, then runs
    `on_close` once."""

    def __init__(self, connection: _Connection, read_timeout: float | None,
                 on_close: Callable[[], None]) -> None:
        self._connection: _Connection | None = connection
        self._timeout = read_timeout
        self._on_close: Callable[[], None] | None = on_close

    @property
    def arrived(self) -> bool:
        """The whole body is here: reading it to its end waits for nothing."""
        connection = self._connection
        return connection is not None and connection.complete

    def _ready(self) -> bytes | None:
        """The next chunk if one is here, None if it is still to come; StopAsyncIteration
        at the end, the connection's error when it broke."""
        connection = self._connection
        if connection is None:
            raise httpx2.StreamClosed()
        if connection.body:
            return connection.take()
        if connection.complete:
            raise StopAsyncIteration
        if connection.error is not None:
            raise connection.error
        if connection.closed:
            raise httpx2.RemoteProtocolError("peer closed connection without sending complete message body")
        return None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            try:
                chunk = self._ready()
            except StopAsyncIteration:
                return
            if chunk is not None:
                yield chunk
            elif not await self._connection.wait(self._timeout):  # type: ignore[union-attr]
                raise httpx2.ReadTimeout("timed out")

    async def next_within(self, wait: float) -> bytes:
        """The next chunk, waiting at most `wait` seconds (then TimeoutError) as well as
        the read timeout (then ReadTimeout); StopAsyncIteration at the end. One timer,
        armed only when the chunk is not here yet: what a stream's supervisor reads
        with instead of a timer of its own around each chunk."""
        chunk = self._ready()
        if chunk is not None:
            return chunk
        loop = asyncio.get_running_loop()
        now = loop.time()
        until = now + max(wait, 0.0)
        read_until = None if self._timeout is None else now + self._timeout
        while True:
            end = until if read_until is None else min(until, read_until)
            if not await self._connection.wait(end - loop.time()):  # type: ignore[union-attr]
                if end == until:
                    raise TimeoutError()
                raise httpx2.ReadTimeout("timed out")
            chunk = self._ready()
            if chunk is not None:
                return chunk

    async def aclose(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.pool._give_back(connection)
        release, self._on_close = self._on_close, None
        if release is not None:
            release()


class Transport:
    """HTTP/1.1 to one provider's hosts: at most `max_connections` open,
    idle ones kept for `keepalive_expiry` seconds."""

    def __init__(self, *, max_connections: int, keepalive_expiry: float,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self._max = max(1, max_connections)
        self._expiry = keepalive_expiry
        self._ssl = ssl_context
        self._idle: dict[tuple[bytes, bytes, int], deque[_Connection]] = {}
        self._all: set[_Connection] = set()  # open or being opened: at most `max_connections`
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    async def send(self, request: httpx2.Request, on_close: Callable[[], None]) -> httpx2.Response:
        """Send `request`; the answer's body runs `on_close` when closed (and so
        does a failure to get an answer)."""
        try:
            head, body, key = _encode(request)
            timeouts = request.extensions.get("timeout") or {}
            read_timeout = timeouts.get("read")
            connection = await self._acquire(key, timeouts)
        except BaseException:
            on_close()
            raise
        try:
            connection.skip_body = request.method == "HEAD"
            await self._write(connection, head, body, timeouts.get("write"))
            while not connection.headers_done:
                if connection.error is not None:
                    raise connection.error
                if connection.closed:
                    raise httpx2.RemoteProtocolError("Server disconnected without sending a response.")
                if not await connection.wait(read_timeout):
                    raise httpx2.ReadTimeout("timed out")
        except BaseException:
            self._drop(connection)
            on_close()
            raise
        return httpx2.Response(status_code=connection.status, headers=connection.headers,
                               stream=_Body(connection, read_timeout, on_close),
                               extensions={"http_version": b"HTTP/1.1", "reason_phrase": connection.reason})

    @staticmethod
    async def _write(connection: _Connection, head: bytes, body: bytes, timeout: float | None) -> None:
        transport = connection.transport
        if transport is None or connection.closed or transport.is_closing():
            raise httpx2.WriteError(str(connection.error or "connection closed"))
        if len(body) < 65536:  # one write (one system call) for what fits; no copy of a large body
            transport.write(head + body)
        else:
            transport.write(head)
            transport.write(body)
        while connection.writing_paused and not connection.closed:
            if not await connection.wait(timeout):
                raise httpx2.WriteTimeout("timed out")
        if connection.closed and not connection.headers_done and connection.error is not None \
                and not connection.body:
            raise httpx2.WriteError(str(connection.error))

    async def _acquire(self, key: tuple[bytes, bytes, int], timeouts: dict[str, Any]) -> _Connection:
        if self._closed:
            raise httpx2.PoolTimeout("the pool is closed")
        deadline: float | None = None
        while True:
            connection = self._idle_connection(key)
            if connection is not None:
                return connection
            if len(self._all) < self._max:  # open or being opened
                return await self._connect(key, timeouts.get("connect"))
            if self._evict_idle():  # idle to another host: make room
                continue
            loop = asyncio.get_running_loop()
            pool_timeout = timeouts.get("pool")
            if deadline is None and pool_timeout is not None:
                deadline = loop.time() + pool_timeout
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                if deadline is None:
                    await waiter
                else:
                    async with asyncio.timeout_at(deadline):
                        await waiter
            except BaseException as err:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # woken but leaving: the slot goes to the next in line
                else:
                    waiter.cancel()
                    try:
                        self._waiters.remove(waiter)
                    except ValueError:
                        pass
                if isinstance(err, TimeoutError):
                    raise httpx2.PoolTimeout("no connection came free in time") from None
                raise

    def _idle_connection(self, key: tuple[bytes, bytes, int]) -> _Connection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        now = time.monotonic()
        while idle and now - idle[0].idle_since > self._expiry:  # the oldest first
            idle.popleft().close()
        while idle:
            connection = idle.pop()  # the newest: the likeliest still open at the server
            if connection.closed or not connection.reusable or connection.transport is None \
                    or connection.transport.is_closing():
                connection.close()
                continue
            connection.in_use = True  # its answer's state was reset when it was given back
            return connection
        return None

    def _evict_idle(self) -> bool:
        for idle in self._idle.values():
            if idle:
                idle.popleft().close()
                return True
        return False

    async def _connect(self, key: tuple[bytes, bytes, int], timeout: float | None) -> _Connection:
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        connection = _Connection(self, key)
        connection.in_use = True
        self._all.add(connection)
        hostname = host.decode("ascii")
        secure = scheme == b"https"
        try:
            async with asyncio.timeout(timeout):
                if secure:
                    await loop.create_connection(lambda: connection, hostname, port,
                                                 ssl=self._ssl or default_ssl_context(),
                                                 server_hostname=hostname)
                else:
                    await loop.create_connection(lambda: connection, hostname, port)
        except TimeoutError:
            self._drop(connection)
            raise httpx2.ConnectTimeout("connect timed out") from None
        except (OSError, ssl.SSLError) as err:
            self._drop(connection)
            raise httpx2.ConnectError(str(err) or type(err).__name__) from err
        except BaseException:
            self._drop(connection)
            raise
        return connection

    @staticmethod
    def _drop(connection: _Connection) -> None:
        """A call gives `connection` up unusable (it failed on it): closed, its slot free."""
        connection.in_use = False
        connection.close()

    def _give_back(self, connection: _Connection) -> None:
        """A call is done with `connection`: idle it (the answer read to its end,
        keep-alive) or close it."""
        if not connection.in_use:
            return
        connection.in_use = False
        if connection.complete and connection.reusable and not connection.closed and not self._closed:
            connection.idle_since = time.monotonic()
            self._idle.setdefault(connection.key, deque()).append(connection)
            connection._begin_response()
            self._wake_one()
        else:
            connection.close()

    def _forget(self, connection: _Connection) -> None:
        """`connection` closed: its slot comes free."""
        if connection in self._all:
            self._all.discard(connection)
            idle = self._idle.get(connection.key)
            if idle and connection in idle:
                idle.remove(connection)
            self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    @property
    def in_use(self) -> int:
        """Connections a call holds now (an answer or body not yet closed)."""
        return sum(connection.in_use for connection in self._all)

    async def aclose(self) -> None:
        self._closed = True
        for connection in list(self._all):
            connection.close()
        self._idle.clear()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)


def _encode(request: httpx2.Request) -> tuple[bytes, bytes, tuple[bytes, bytes, int]]:
    """The request's head and body as bytes, and the pool key of its host."""
    url = request.url
    scheme = url.raw_scheme
    if scheme not in _DEFAULT_PORTS:
        raise httpx2.UnsupportedProtocol(f"Request URL has an unsupported protocol '{scheme.decode()}://'.")
    host = url.raw_host
    if not host:
        raise httpx2.UnsupportedProtocol("Request URL is missing a host.")
    port = url.port or _DEFAULT_PORTS[scheme]
    try:
        body = request.content
    except httpx2.RequestNotRead:
        raise httpx2.LocalProtocolError("the request's body must be read before it is sent") from None
    lines = [b"%s %s HTTP/1.1" % (request.method.encode("ascii"), url.raw_path)]
    chunked = False
    for name, value in request.headers.raw:
        if name.lower() == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        lines.append(name + b": " + value)
    lines.append(b"\r\n")
    head = b"\r\n".join(lines)
    if head.count(b"\n") != len(lines) or head.count(b"\r") != len(lines):
        raise httpx2.LocalProtocolError("a request header holds a line break")
    if chunked:
        body = (b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)) if body else b"0\r\n\r\n"
    return head, body, (scheme, host, port)
