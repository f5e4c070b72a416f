"""The async transport: httpcore2 connection pools on plain asyncio (one per
event loop; `aionet`), and the policy's retries driven by the same
`PolicyRetry` urllib3 uses for the sync face: httpx errors are mapped onto
urllib3's exception types, so `increment`, `is_retry` and `wait_for` decide
exactly as they do there.

Pool overflow: a call beyond `pool_size` waits for a connection until its
deadline (httpx's pool timeout), then fails as `PoolExhausted`.

The pool is sharded: httpcore re-examines every pooled connection whenever
a request starts or ends, so one pool of hundreds of
connections costs O(connections) per call. Shards of at most `SHARD_SIZE`
connections keep that cost flat. A call takes the first shard with a free
slot (fill-first, counted from send to the body's close), so a quiet upstream
reuses the few connections of the first shard instead of visiting every
shard in turn and letting each one's connection expire.
"""
from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable

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

#: Most connections in one httpcore pool (see the module docstring).
SHARD_SIZE = 16
#: Seconds an idle connection is kept: below the common 5 s server keep-alive
#: (uvicorn, many proxies), so we rarely write to a connection the server is closing.
KEEPALIVE_EXPIRY = 4.0


class _Shards:
    """The transports of one event loop and the calls each one carries."""

    def __init__(self, pool_size: int) -> None:
        count = max(1, -(-pool_size // SHARD_SIZE))
        self.per_shard = -(-pool_size // count)
        self.transports = [Transport(max_connections=self.per_shard, keepalive_expiry=KEEPALIVE_EXPIRY)
                           for _ in range(count)]
        self.in_flight = [0] * count

    def lease(self) -> tuple[Transport, Callable[[], None]]:
        """The first shard with a free slot (when every one is full, the least
        busy: the call then waits in its pool) and the release of that slot,
        which may be called more than once."""
        counts = self.in_flight
        index = next((i for i, count in enumerate(counts) if count < self.per_shard), None)
        if index is None:
            index = counts.index(min(counts))
        counts[index] += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                counts[index] -= 1

        return self.transports[index], release


class AsyncPool:
    """The async connection pool of one upstream: per event loop (connections
    belong to the loop that opened them), sharded."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._closing: set[asyncio.Task] = set()
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Shards] = \
            weakref.WeakKeyDictionary()

    def lease(self) -> tuple[Transport, Callable[[], None]]:
        loop = asyncio.get_running_loop()
        shards = self._by_loop.get(loop)
        if shards is None:
            shards = self._by_loop[loop] = _Shards(self.policy.pool_size)
        return shards.lease()

    def close(self) -> None:
        """Close the pool of the running loop, if any (others close with their loop)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._by_loop.clear()
            return
        shards = self._by_loop.pop(loop, None)
        for transport in shards.transports if shards is not None else ():
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
            transport, release = pool.lease()
            try:
                response = await transport.send(request, release)  # the body's close releases the slot
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
            await asyncio.wait_for(answer.aread(), max(MIN_TIMEOUT, trace.remaining()))
        except TimeoutError:
            await answer.aclose()
            raise DeadlineExceeded(0.0, trace.remaining()) from None
        except httpx2.TransportError as err:
            await answer.aclose()
            raise _as_urllib3(err, url) from err
    return answer
