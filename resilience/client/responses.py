"""What a call answers with: cached entries, call metadata, and the response
classes of the two faces.

`CacheEntry` is a response as immutable data: what the response cache
stores, what single-flight hands to the callers that waited, what a stale
answer is rebuilt from. Each caller builds its own response object from it
(never a shared, mutable one). `UpstreamResponse` (requests) and
`AsyncUpstreamResponse` (httpx2) carry a `CallMeta` saying where the answer
came from; their `close()` also frees the call's bulkhead slot when the
caller streamed the body.
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx2
import requests
from requests.structures import CaseInsensitiveDict

from resilience.client.context import open_streams

# Response headers never replayed from the cache.
UNCACHED_HEADERS = frozenset({"set-cookie", "connection", "keep-alive", "transfer-encoding",
                              "content-encoding", "content-length"})


def wall_clock() -> float:
    """Wall time for cache-entry expiry (shared across processes); a test seam."""
    return time.time()


@dataclass(frozen=True, slots=True)
class CallMeta:
    """Where an answer came from: `from_cache` (cache, stale copy or another
    caller's flight), `stale`, `shared` (another caller's flight) and how
    many `attempts` this call made upstream (0 when none); `endpoint` names
    the endpoint that answered ("" for a single-URL upstream), `model` the
    fallback model asked instead of the caller's ("" when none), `sent_at`
    (time.monotonic) when the attempt that answered was sent, `wire` the
    wire format that endpoint speaks."""

    from_cache: bool = False
    stale: bool = False
    shared: bool = False
    attempts: int = 0
    endpoint: str = ""
    model: str = ""
    sent_at: float = 0.0
    #: The wire format of the endpoint that answered (a stream's events are parsed in it).
    wire: str = "openai"


FRESH = CallMeta()


@dataclass(frozen=True, slots=True)
class CacheEntry:
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    url: str
    expires: float

    @classmethod
    def of(cls, *, status: int, reason: str, headers: Any, body: bytes, url: str, ttl: float) -> CacheEntry:
        kept = tuple((k, v) for k, v in headers.items() if k.lower() not in UNCACHED_HEADERS)
        return cls(status, reason or "", kept, body, str(url), wall_clock() + ttl)

    def fresh(self, now: float | None = None) -> bool:
        return self.expires > (wall_clock() if now is None else now)


class _CallResponse:
    """What both faces' responses add: where the answer came from (`meta`),
    and the call's release callbacks, run once each (in order) when the
    response is closed.

    A streamed answer is settled when it closes, not when its headers came:
    a reader that saw the stream break (resilience.client.stream) sets
    `stream_failure` before closing, and the endpoint's breaker, score and
    call-log row then count the attempt as failed; `stream_counts` (event
    name -> count) go into the row's rollup signals and the metrics;
    `stream_usage` (a clean answer's usage) corrects the endpoint's token
    reservation (resilience.client.admission)."""

    meta: CallMeta = FRESH
    _on_close: list[Callable[[], None]] | None = None
    stream_failure: Any = None
    stream_counts: dict[str, int] | None = None
    #: The answer's usage as the stream supervisor read it (its last event), for the quota.
    stream_usage: dict[str, Any] | None = None
    #: Events the stream supervisor read of this answer (None: not supervised); 0 at its close
    #: frees its endpoint reservation but for the prompt (resilience.client.admission).
    stream_read: int | None = None

    @property
    def from_cache(self) -> bool:
        return self.meta.from_cache

    @property
    def stale(self) -> bool:
        return self.meta.stale

    @property
    def shared(self) -> bool:
        return self.meta.shared

    @property
    def attempts(self) -> int:
        return self.meta.attempts

    @property
    def endpoint(self) -> str:
        return self.meta.endpoint

    def when_closed(self, callback: Callable[[], None]) -> None:
        if self._on_close is None:
            self._on_close = []
        self._on_close.append(callback)

    def _closed(self) -> None:
        callbacks, self._on_close = self._on_close, None
        for callback in callbacks or ():
            callback()


class UpstreamResponse(_CallResponse, requests.Response):
    """A requests.Response from the resilient client (sync face)."""

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._closed()

    @classmethod
    def from_entry(cls, entry: CacheEntry, request: requests.PreparedRequest,
                   meta: CallMeta) -> UpstreamResponse:
        response = cls()
        response.status_code = entry.status
        response.reason = entry.reason
        response.headers = CaseInsensitiveDict(entry.headers)
        response._content = entry.body
        response._content_consumed = True
        response.url = entry.url
        response.encoding = requests.utils.get_encoding_from_headers(response.headers)
        response.request = request
        response.meta = meta
        return response

    def to_entry(self, ttl: float) -> CacheEntry:
        return CacheEntry.of(status=self.status_code, reason=self.reason, headers=self.headers,
                             body=self.content, url=self.url, ttl=ttl)


class AsyncUpstreamResponse(_CallResponse, httpx2.Response):
    """An httpx2.Response from the resilient client (async face)."""

    @property
    def ok(self) -> bool:
        return self.status_code < 400

    def aiter_body(self) -> AsyncIterator[bytes]:
        """The body's chunks as they arrive, decoded: `aiter_bytes()`, or for
        an unencoded body (as server-sent events are) the chunks straight off
        the connection, without the response's own steps per chunk. Unlike
        `aiter_bytes()`, reaching the end does not close the response: close
        it (`aclose()`) when done."""
        if self._unencoded:
            return aiter(self.stream)
        return self.aiter_bytes()

    @property
    def _unencoded(self) -> bool:
        """The body's bytes are the content itself (no Content-Encoding to undo)."""
        return self.headers.get("content-encoding", "identity") == "identity"

    def chunk_reader(self) -> Callable[[float], Awaitable[bytes]]:
        """`await read(wait)`: the next chunk of `aiter_body()`, waiting at most
        `wait` seconds (TimeoutError past it); StopAsyncIteration at the end.
        An unencoded body on the project's transport is read under the
        connection's own timer (resilience.client.aionet: one timer per wait,
        none when the chunk is here); any other body under a timer per read."""
        within = getattr(self.stream, "next_within", None)
        if within is not None and self._unencoded:
            return within
        body = aiter(self.aiter_body())

        async def read(wait: float) -> bytes:
            async with asyncio.timeout(wait):
                return await anext(body)
        return read

    _held_by: set[Any] | None = None

    def when_closed(self, callback: Callable[[], None]) -> None:
        super().when_closed(callback)
        # Held by the request (resilience.client.context.open_streams) until closed.
        self._held_by = open_streams.get()
        if self._held_by is not None:
            self._held_by.add(self)

    def _closed(self) -> None:
        if self._held_by is not None:
            self._held_by.discard(self)
        super()._closed()

    async def aclose(self) -> None:
        try:
            await super().aclose()
        finally:
            self._closed()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._closed()

    #: Builds `request` when first read (a cached answer's: most callers never read it).
    _request_of: Callable[[], httpx2.Request] | None = None

    @property
    def request(self) -> httpx2.Request:
        if self._request is None and self._request_of is not None:
            self._request, self._request_of = self._request_of(), None
        return httpx2.Response.request.fget(self)

    @request.setter
    def request(self, value: httpx2.Request) -> None:
        self._request = value

    @classmethod
    def from_entry(cls, entry: CacheEntry, request: Callable[[], httpx2.Request],
                   meta: CallMeta) -> AsyncUpstreamResponse:
        """The response `Response(status, headers=..., content=entry.body)` is once it has read its
        body, made without reading it: the body is set as it is, not run through httpx2's decoders
        and chunker (an entry's body is decoded already; its Content-Encoding was not kept), and
        `request` (which builds the request) is called only when the response's request is read.
        A cache hit's response took 16 us to make (its request 5 of them), now 2.4 us."""
        body = entry.body
        headers = [*entry.headers, ("Content-Length", str(len(body)))] if body else list(entry.headers)
        response = cls(entry.status, headers=headers, stream=httpx2.ByteStream(body),
                       extensions={"reason_phrase": entry.reason.encode("latin-1", "replace")})
        response._content = body
        response.is_stream_consumed = response.is_closed = True
        response._request_of = request
        response.meta = meta
        return response

    def to_entry(self, ttl: float) -> CacheEntry:
        return CacheEntry.of(status=self.status_code, reason=self.reason_phrase, headers=self.headers,
                             body=self.content, url=str(self.request.url), ttl=ttl)


class NearCache:
    """A small per-process copy of hot response entries in front of Redis.

    A hit on Redis costs a network round trip; a hot entry is kept here for at
    most `HTTP_CACHE_NEAR_SECONDS` (and never past its own TTL). The price: a
    clear made by another process is seen here up to that long after (this
    process's clears empty it at once). Unused when the cache is local memory.
    """

    #: Test seam: the clock entries age by.
    clock = staticmethod(time.monotonic)

    def __init__(self, max_entries: int = 512) -> None:
        self._entries: OrderedDict[str, tuple[float, CacheEntry]] = OrderedDict()
        self._lock = threading.Lock()
        self.max_entries = max_entries

    def get(self, key: str) -> CacheEntry | None:
        found = self._entries.get(key)
        if found is None:
            return None
        if found[0] <= self.clock():
            with self._lock:
                self._entries.pop(key, None)
            return None
        return found[1]

    def put(self, key: str, entry: CacheEntry, seconds: float) -> None:
        with self._lock:
            self._entries[key] = (self.clock() + seconds, entry)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
