"""The httpcore2 contender to the async client's transport
(`resilience.client.aionet.Transport`; issue 30): the client's transport
until issue 30, kept as the baseline `python -m bench.bench_aionet` measures
the httptools transport against, and a `bench.transport_swap` contender.

httpcore2's pool and h11 on a network backend of our own on plain asyncio
(uvloop under `make serve`): httpcore2's own backend goes through anyio, which
wraps every read and every write in a cancel scope. Here the socket is an
`asyncio.Protocol` that buffers what arrives: a read that finds data returns
it without touching the loop, one that must wait arms a single loop timer for
its timeout. httpcore2's errors become httpx2's of the same name, as httpx2's
own transport does.
"""
from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import httpcore2
import httpx2
from httpcore2 import AsyncNetworkBackend, AsyncNetworkStream

from resilience.client.aionet import default_ssl_context

#: Bytes buffered from a socket before reading from it pauses (flow control).
READ_HIGH_WATER = 256 * 1024


class _Socket(asyncio.Protocol):
    """A connection's receive buffer and the waits on it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.eof = False
        self.error: BaseException | None = None
        self.reading_paused = False
        self.writing_paused = False
        self._readable: asyncio.Future[bool] | None = None
        self._drained: asyncio.Future[bool] | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.buffered += len(data)
        if self.buffered > READ_HIGH_WATER and not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake_reader()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = exc
        self._wake_reader()
        self._wake_writer()

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._wake_writer()

    # waits
    def _wake_reader(self) -> None:
        waiter, self._readable = self._readable, None
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    def _wake_writer(self) -> None:
        waiter, self._drained = self._drained, None
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    async def wait(self, *, drain: bool, timeout: float | None) -> bool:
        """Until data (or EOF) arrives, or the write buffer drains: False on timeout."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        if drain:
            self._drained = waiter
        else:
            self._readable = waiter
        timer = None if timeout is None else loop.call_later(max(timeout, 0.0), _expire, waiter)
        try:
            return await waiter
        finally:
            if timer is not None:
                timer.cancel()
            if drain:
                self._drained = None
            else:
                self._readable = None

    def take(self, max_bytes: int) -> bytes:
        chunk = self.chunks.popleft()
        if len(chunk) > max_bytes:
            self.chunks.appendleft(chunk[max_bytes:])
            chunk = chunk[:max_bytes]
        self.buffered -= len(chunk)
        if self.reading_paused and self.buffered <= READ_HIGH_WATER // 4 and self.transport is not None:
            self.reading_paused = False
            self.transport.resume_reading()
        return chunk


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


class AsyncioStream(AsyncNetworkStream):
    """One connection (plain or TLS) as httpcore2 reads and writes it."""

    def __init__(self, transport: asyncio.Transport, protocol: _Socket) -> None:
        self._transport = transport
        self._protocol = protocol

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        protocol = self._protocol
        waited = protocol.chunks or protocol.eof or await protocol.wait(drain=False, timeout=timeout)
        if not waited:
            raise httpcore2.ReadTimeout("timed out")
        if protocol.chunks:
            return protocol.take(max_bytes)
        if protocol.error is not None:
            raise httpcore2.ReadError(str(protocol.error) or type(protocol.error).__name__)
        return b""

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        protocol = self._protocol
        if protocol.error is not None or self._transport.is_closing():
            raise httpcore2.WriteError(str(protocol.error or "connection closed"))
        self._transport.write(buffer)
        if protocol.writing_paused and not await protocol.wait(drain=True, timeout=timeout):
            raise httpcore2.WriteTimeout("timed out")
        if protocol.error is not None:
            raise httpcore2.WriteError(str(protocol.error))

    async def aclose(self) -> None:
        self._transport.close()

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport = await loop.start_tls(self._transport, self._protocol, ssl_context,
                                                 server_hostname=server_hostname)
        except TimeoutError:
            self._transport.abort()
            raise httpcore2.ConnectTimeout("TLS handshake timed out") from None
        except (OSError, ssl.SSLError) as err:
            self._transport.abort()
            raise httpcore2.ConnectError(str(err)) from err
        if transport is None:  # the peer closed during the handshake
            raise httpcore2.ConnectError("connection closed during the TLS handshake")
        self._protocol.transport = transport  # type: ignore[assignment]
        return AsyncioStream(transport, self._protocol)  # type: ignore[arg-type]

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":  # idle and readable: the server closed it (or broke protocol)
            return bool(self._protocol.chunks) or self._protocol.eof
        if info == "ssl_object":
            return self._transport.get_extra_info("ssl_object")
        if info == "client_addr":
            return self._transport.get_extra_info("sockname")
        if info == "server_addr":
            return self._transport.get_extra_info("peername")
        if info == "socket":
            return self._transport.get_extra_info("socket")
        return None


class AsyncioBackend(AsyncNetworkBackend):
    """httpcore2's network backend on the running asyncio loop."""

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None) -> AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        local = (local_address, 0) if local_address else None
        return await self._connect(lambda: loop.create_connection(_Socket, host, port, local_addr=local),
                                   timeout, socket_options)

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[Any] | None = None) -> AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        return await self._connect(lambda: loop.create_unix_connection(_Socket, path), timeout,
                                   socket_options)

    @staticmethod
    async def _connect(opening: Callable[[], Any], timeout: float | None,
                       socket_options: Iterable[Any] | None) -> AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                transport, protocol = await opening()
        except TimeoutError:
            raise httpcore2.ConnectTimeout("connect timed out") from None
        except OSError as err:
            raise httpcore2.ConnectError(str(err) or type(err).__name__) from err
        sock = transport.get_extra_info("socket")
        for option in socket_options or ():
            sock.setsockopt(*option)
        return AsyncioStream(transport, protocol)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def _as_httpx(err: Exception) -> httpx2.TransportError:
    """httpcore2's error as httpx2's of the same name (as httpx2's transport maps them)."""
    kind = getattr(httpx2, type(err).__name__, None)
    if not (isinstance(kind, type) and issubclass(kind, httpx2.TransportError)):
        kind = httpx2.TransportError
    mapped = kind(str(err))
    mapped.__cause__ = err
    return mapped


_HTTPCORE_ERRORS = (httpcore2.TimeoutException, httpcore2.NetworkError, httpcore2.ProtocolError,
                    httpcore2.ProxyError, httpcore2.UnsupportedProtocol)


class _Body(httpx2.AsyncByteStream):
    """A response body off the pool: errors as httpx2's, and `on_close` run
    once when it is closed (the shard slot's release)."""

    def __init__(self, stream: Any, on_close: Callable[[], None]) -> None:
        self._stream = stream
        self._on_close: Callable[[], None] | None = on_close

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._stream:
                yield chunk
        except _HTTPCORE_ERRORS as err:
            raise _as_httpx(err) from err

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            release, self._on_close = self._on_close, None
            if release is not None:
                release()


class Transport:
    """HTTP/1.1 over one httpcore2 pool on `AsyncioBackend`."""

    def __init__(self, *, max_connections: int, keepalive_expiry: float,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self._pool = httpcore2.AsyncConnectionPool(
            ssl_context=ssl_context or default_ssl_context(), max_connections=max_connections,
            max_keepalive_connections=max_connections, keepalive_expiry=keepalive_expiry,
            http1=True, http2=False, retries=0, network_backend=AsyncioBackend())

    async def send(self, request: httpx2.Request, on_close: Callable[[], None]) -> httpx2.Response:
        """Send `request`; the answer's body runs `on_close` when closed (and so
        does a failure to get an answer)."""
        url = request.url
        try:
            target = httpcore2.URL(scheme=url.raw_scheme, host=url.raw_host, port=url.port,
                                   target=url.raw_path)
            core = httpcore2.Request(method=request.method, url=target, headers=request.headers.raw,
                                     content=request.stream, extensions=request.extensions)
            answer = await self._pool.handle_async_request(core)
        except _HTTPCORE_ERRORS as err:
            on_close()
            raise _as_httpx(err) from err
        except BaseException:
            on_close()
            raise
        return httpx2.Response(status_code=answer.status, headers=answer.headers,
                               stream=_Body(answer.stream, on_close), extensions=answer.extensions)

    async def aclose(self) -> None:
        await self._pool.aclose()
