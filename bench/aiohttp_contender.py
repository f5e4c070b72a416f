"""The aiohttp contender to the async client's transport (`resilience.client.aionet.Transport`;
issue 30), measured, not adopted.

`send(request, on_close)` takes an httpx2.Request and answers an
httpx2.Response whose body reads aiohttp's payload; aiohttp's errors become
httpx2's of the matching kind, so `asend` maps and retries them unchanged.
`bench.bench_aionet` prices it; `bench.transport_swap` (a pytest plugin, `SWAP_TRANSPORT=aiohttp`) runs
the fault suites with it under `asend`. The figures and why it was not
taken: README, "The HTTP/1.1 client to the provider".
"""
from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import httpx2
import yarl

from resilience.client.aionet import default_ssl_context

#: Headers aiohttp computes itself (from the URL and the body).
_OWN_HEADERS = frozenset({b"host", b"content-length", b"transfer-encoding"})


def _as_httpx(err: BaseException) -> httpx2.TransportError:
    if isinstance(err, aiohttp.ConnectionTimeoutError):
        kind: type[httpx2.TransportError] = httpx2.ConnectTimeout
    elif isinstance(err, (aiohttp.ServerTimeoutError, asyncio.TimeoutError)):
        kind = httpx2.ReadTimeout
    elif isinstance(err, aiohttp.NonHttpUrlClientError):
        kind = httpx2.UnsupportedProtocol
    elif isinstance(err, aiohttp.ClientConnectorError):
        kind = httpx2.ConnectError
    elif isinstance(err, (aiohttp.ClientPayloadError, aiohttp.ClientResponseError,
                          aiohttp.ServerDisconnectedError)):
        kind = httpx2.RemoteProtocolError
    else:
        kind = httpx2.ReadError
    mapped = kind(str(err) or type(err).__name__)
    mapped.__cause__ = err
    return mapped


_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError)


class _Body(httpx2.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse, on_close: Callable[[], None]) -> None:
        self._response = response
        self._on_close: Callable[[], None] | None = on_close

    async def __aiter__(self) -> AsyncIterator[bytes]:
        content = self._response.content
        try:
            while True:
                chunk = await content.readany()
                if not chunk:
                    return
                yield chunk
        except _ERRORS as err:
            raise _as_httpx(err) from err

    async def aclose(self) -> None:
        try:
            self._response.release()
        finally:
            release, self._on_close = self._on_close, None
            if release is not None:
                release()


class Transport:
    """HTTP/1.1 over one aiohttp connector (plain asyncio, C parser)."""

    def __init__(self, *, max_connections: int, keepalive_expiry: float,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self._max = max_connections
        self._keepalive = keepalive_expiry
        self._ssl = ssl_context or default_ssl_context()
        self._session: aiohttp.ClientSession | None = None
        self._slots: asyncio.Semaphore | None = None

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=self._max, keepalive_timeout=self._keepalive, ssl=self._ssl)
        self._slots = asyncio.Semaphore(self._max)
        self._session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                                              auto_decompress=False, trust_env=False,
                                              skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding",
                                                                 "Content-Type"))
        return self._session

    async def send(self, request: httpx2.Request, on_close: Callable[[], None]) -> httpx2.Response:
        session = self._session or self._open()
        slots = self._slots
        assert slots is not None
        timeouts: dict[str, Any] = request.extensions.get("timeout", {})
        try:
            async with asyncio.timeout(timeouts.get("pool")):
                await slots.acquire()
        except TimeoutError:
            on_close()
            raise httpx2.PoolTimeout("no connection came free") from None

        def release() -> None:
            slots.release()
            on_close()

        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw
                   if k.lower() not in _OWN_HEADERS]
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeouts.get("connect"),
                                        sock_read=timeouts.get("read"))
        try:
            answer = await session.request(request.method, yarl.URL(str(request.url), encoded=True),
                                           headers=headers, data=request.content or None,
                                           allow_redirects=False, timeout=timeout)
        except _ERRORS as err:
            release()
            raise _as_httpx(err) from err
        except BaseException:
            release()
            raise
        return httpx2.Response(status_code=answer.status, headers=list(answer.raw_headers),
                               stream=_Body(answer, release),
                               extensions={"reason_phrase": (answer.reason or "").encode("latin-1"),
                                           "http_version": b"HTTP/1.1"})

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
