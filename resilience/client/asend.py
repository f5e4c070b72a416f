"""The async transport: one connection pool per event loop (`aionet`), and
the policy's retries driven by the same `PolicyRetry` urllib3 uses for the
sync face: httpx errors are mapped onto urllib3's exception types, so
`increment`, `is_retry` and `wait_for` decide exactly as they do there.

Pool overflow: a call beyond `pool_size` waits for a connection until its
deadline (the pool timeout), then fails as `PoolExhausted`.
"""
from __future__ import annotations

import asyncio
import weakref

import httpx2
from urllib3.exceptions import (
    ConnectTimeoutError,
    EmptyPoolError,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)

from resilience.client.aionet import Transport
from resilience.client.credentials import Credentials
from resilience.client.policy import (
    MIN_TIMEOUT,
    DeadlineExceeded,
    Policy,
    Trace,
    attempt_timeout,
    current_trace,
)
from resilience.client.responses import AsyncUpstreamResponse
from resilience.client.spec import RequestSpec

#: Seconds an idle connection is kept: below the common 5 s server keep-alive
#: (uvicorn, many proxies), so we rarely write to a connection the server is closing.
KEEPALIVE_EXPIRY = 4.0


def _nothing() -> None:
    pass


class AsyncPool:
    """The async connection pool of one upstream, per event loop (connections
    belong to the loop that opened them)."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._closing: set[asyncio.Task] = set()
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Transport] = \
            weakref.WeakKeyDictionary()

    def transport(self) -> Transport:
        loop = asyncio.get_running_loop()
        transport = self._by_loop.get(loop)
        if transport is None:
            transport = self._by_loop[loop] = Transport(max_connections=self.policy.pool_size,
                                                        keepalive_expiry=KEEPALIVE_EXPIRY)
        return transport

    def close(self) -> None:
        """Close the pool of the running loop, if any (others close with their loop)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._by_loop.clear()
            return
        transport = self._by_loop.pop(loop, None)
        if transport is not None:
            task = loop.create_task(transport.aclose())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)


class _StatusView:
    """What urllib3's Retry reads of a response (status, headers)."""

    def __init__(self, response: httpx2.Response) -> None:
        self.status = response.status_code
        self.headers = response.headers

    def get_redirect_location(self) -> bool:
        return False


def _as_urllib3(err: httpx2.TransportError, url: str) -> Exception:
    if isinstance(err, httpx2.ConnectTimeout):
        mapped: Exception = ConnectTimeoutError("connect timed out")
    elif isinstance(err, httpx2.ConnectError):
        mapped = NewConnectionError(None, "connection failed")  # type: ignore[arg-type]
    elif isinstance(err, httpx2.TimeoutException):
        mapped = ReadTimeoutError(None, url, "read timed out")  # type: ignore[arg-type]
    else:
        mapped = ProtocolError("connection broken", err)
    mapped.__cause__ = err
    return mapped


def build_request(spec: RequestSpec, credentials: Credentials) -> httpx2.Request:
    headers, params = credentials.headers_and_params()
    content_type = spec.content_type()
    all_headers = {**({"Content-Type": content_type} if content_type else {}), **spec.headers, **headers}
    query = spec.query + params
    # No params at all when there are none: httpx2 merges even an empty list into the URL (17 µs a call).
    return httpx2.Request(spec.method, spec.url_path, params=query or None, headers=all_headers,
                          content=spec.body_bytes() or None)


async def asend(pool: AsyncPool, policy: Policy, request: httpx2.Request, trace: Trace, *,
                stream: bool) -> AsyncUpstreamResponse:
    """Send with the policy's retries; read the body within the deadline
    unless the caller streams a successful answer. Raises urllib3's exception
    types (mapped), `MaxRetryError`, `EmptyPoolError` or `DeadlineExceeded`."""
    retry = policy.build_retry()
    method, url = request.method, request.url.path
    token = current_trace.set(trace)
    try:
        while True:
            timeout = attempt_timeout(policy, trace, stream=stream)
            read = timeout.read_timeout
            request.extensions["timeout"] = {"connect": timeout.connect_timeout, "read": read, "write": read,
                                             "pool": max(MIN_TIMEOUT, trace.remaining())}
            try:
                response = await pool.transport().send(request, _nothing)
            except BaseException as err:
                if isinstance(err, httpx2.PoolTimeout):
                    raise EmptyPoolError(None, "no pooled connection came free") from err  # type: ignore[arg-type]
                if not isinstance(err, httpx2.TransportError):
                    raise
                retry = retry.increment(method, url, error=_as_urllib3(err, url))
                await retry.asleep()
                continue
            view = _StatusView(response)
            if retry.is_retry(method, response.status_code, bool(response.headers.get("Retry-After"))):
                try:
                    retry = retry.increment(method, url, response=view)
                except MaxRetryError:
                    break  # out of retries: the caller gets this answer
                await response.aclose()
                await retry.asleep(view)
                continue
            break
    finally:
        current_trace.reset(token)
    answer = AsyncUpstreamResponse(response.status_code, headers=response.headers,
                                   stream=response.stream,
                                   extensions=response.extensions, request=request)
    if not stream or answer.status_code >= 400:
        try:
            if getattr(response.stream, "arrived", False):  # nothing to wait for: no deadline timer
                await answer.aread()
            else:
                await asyncio.wait_for(answer.aread(), max(MIN_TIMEOUT, trace.remaining()))
        except TimeoutError:
            await answer.aclose()
            raise DeadlineExceeded(0.0, trace.remaining()) from None
        except httpx2.TransportError as err:
            await answer.aclose()
            raise _as_urllib3(err, url) from err
    return answer
