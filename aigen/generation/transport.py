"""httpx2 transports that send the openai SDK's requests through a
resilience upstream client: `UpstreamTransport` (sync SDK, `upstream.request`)
and `AsyncUpstreamTransport` (`AsyncOpenAI`, `upstream.arequest`).

The SDK is built with `base_url=SDK_BASE_URL` (a placeholder with no path),
`api_key=SDK_API_KEY` (a placeholder too: the key is the upstream policy's
credential, sent only to the policy's origin) and `max_retries=0`; this
transport takes each request's path ("/chat/completions") and hands it to
`upstream(name).request(...)`, which joins it to the policy's base URL and
applies its credential, timeouts, retries, circuit breaker and call log. The
policy in the admin is therefore the single source of truth for where the SDK
goes, with which key, and how hard it tries.

A provider that ignores `"stream": true` and answers one JSON completion is
handed to the SDK as a one-event stream (`_completion_as_events`), so the
streamed answer is the same text.

On failure: the resilient client's `UpstreamError` kinds (breaker open, timeout,
retries exhausted, ...) propagate unchanged through the SDK, which only wraps
httpx errors; a stream that breaks while its body is read raises
`UpstreamTimeout` or `UpstreamConnectionError` the same way, and is counted
as a failure of its endpoint when it closes (breaker, call log). These
streams are relayed, not supervised: the sync provider's `stream()` goes
this way; the async one is supervised (resilience.client.stream).
"""
from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx2
import requests
from urllib3.exceptions import ReadTimeoutError

from resilience import upstream
from resilience.exceptions import UpstreamConnectionError, UpstreamTimeout

#: The SDK's base URL: no path, so the SDK's paths are relative to the policy's.
SDK_BASE_URL = "http://openai.upstream"
#: The SDK's key: never sent (the upstream's credential is; see `_REQUEST_DROP`).
SDK_API_KEY = "the-upstream-policy-credential"

# Hop-by-hop or recomputed by requests; Host would name the placeholder.
# Accept-Encoding is left to requests, which knows what it can decode.
# Authorization: the SDK's holds a placeholder; the credential is the upstream
# policy's (bound to its origin), never one the SDK carries.
_REQUEST_DROP = frozenset({"host", "content-length", "connection", "transfer-encoding", "accept-encoding",
                           "keep-alive", "upgrade", "te", "trailer", "authorization"})
# requests hands over decoded bytes, so the encoding and length no longer apply.
_RESPONSE_DROP = frozenset({"content-encoding", "content-length", "transfer-encoding", "connection",
                            "keep-alive"})


def _wants_stream(request: httpx2.Request, body: bytes) -> bool:
    if "text/event-stream" in request.headers.get("accept", ""):
        return True
    if not body or "json" not in request.headers.get("content-type", ""):
        return False
    try:
        payload = json.loads(body)
    except ValueError:
        return False
    return isinstance(payload, dict) and payload.get("stream") is True


def _completion_as_events(body: bytes) -> bytes:
    """A non-streamed chat completion as the SSE chunks a stream would carry."""
    try:
        completion = json.loads(body)
        choices = completion["choices"]
    except (ValueError, KeyError, TypeError):
        return body  # not a completion: let the SDK report what it is
    chunk = {
        "id": completion.get("id", ""), "object": "chat.completion.chunk",
        "created": completion.get("created", 0), "model": completion.get("model", ""),
        "choices": [{"index": c.get("index", 0), "delta": {"role": "assistant",
                     "content": (c.get("message") or {}).get("content")},
                     "finish_reason": c.get("finish_reason")} for c in choices],
    }
    events = f"data: {json.dumps(chunk)}\n\n"
    if completion.get("usage"):
        events += f"data: {json.dumps({**chunk, 'choices': [], 'usage': completion['usage']})}\n\n"
    return (events + "data: [DONE]\n\n").encode()


def _is_json(headers: Any) -> bool:
    return "json" in headers.get("content-type", "")


def _response_headers(headers: Any, *, as_events: bool = False) -> list[tuple[str, str]]:
    kept = [(k, v) for k, v in headers.items() if k.lower() not in _RESPONSE_DROP]
    if as_events:
        kept = [(k, v) for k, v in kept if k.lower() != "content-type"]
        kept.append(("content-type", "text/event-stream"))
    return kept


def _extensions(reason: str) -> dict[str, Any]:
    return {"http_version": b"HTTP/1.1", "reason_phrase": (reason or "").encode("latin-1", "replace")}


def _stream_failure(err: Exception, upstream_name: str) -> Exception:
    if isinstance(err, (ReadTimeoutError, httpx2.TimeoutException)) or "timed out" in str(err).lower():
        return UpstreamTimeout(f"{upstream_name}: read timed out while streaming", upstream=upstream_name)
    return UpstreamConnectionError(f"{upstream_name}: stream broke: {type(err).__name__}",
                                   upstream=upstream_name)


class _BodyStream(httpx2.SyncByteStream):
    """A streamed requests.Response body as an httpx2 byte stream."""

    def __init__(self, response: requests.Response, upstream_name: str) -> None:
        self._response = response
        self._upstream = upstream_name
        self._iterator: Iterator[bytes] | None = None  # continued by a second iteration (see below)

    def _chunks(self) -> Iterator[bytes]:
        raw = self._response.raw
        if getattr(raw, "chunked", False) or not hasattr(raw, "read1"):
            # Chunked (as SSE streams are): each chunk as it arrives.
            yield from self._response.iter_content(chunk_size=None)
            return
        # A sized body: whatever has arrived, without waiting for the rest.
        while chunk := raw.read1(64 * 1024, decode_content=True):
            yield chunk

    def __iter__(self) -> Iterator[bytes]:
        if self._iterator is None:
            self._iterator = self._chunks()
        try:
            for chunk in self._iterator:  # noqa: UP028 (`yield from` would close the body with this generator)
                yield chunk
        except (requests.exceptions.RequestException, ReadTimeoutError, OSError) as err:
            failure = _stream_failure(err, self._upstream)
            self._response.stream_failure = failure  # the endpoint's failure when the body closes
            raise failure from None

    def close(self) -> None:
        self._response.close()


class UpstreamTransport(httpx2.BaseTransport):
    """Send httpx2 requests through `resilience.upstream(name)`."""

    def __init__(self, upstream_name: str) -> None:
        self.upstream_name = upstream_name

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        body = request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _REQUEST_DROP}
        params: list[tuple[str, Any]] = list(request.url.params.multi_items())
        stream = _wants_stream(request, body)
        response = upstream(self.upstream_name).request(
            request.method, request.url.path, params=params or None, headers=headers,
            data=body or None, stream=stream,
        )
        if stream and response.status_code < 400 and _is_json(response.headers):
            try:  # the provider ignored "stream": true
                content = _completion_as_events(response.content)
            finally:
                response.close()
            return httpx2.Response(response.status_code,
                                   headers=_response_headers(response.headers, as_events=True),
                                   content=content,
                                   request=request, extensions=_extensions(response.reason))
        if stream:
            return httpx2.Response(response.status_code, headers=_response_headers(response.headers),
                                   stream=_BodyStream(response, self.upstream_name), request=request,
                                   extensions=_extensions(response.reason))
        try:
            content = response.content
        finally:
            response.close()
        return httpx2.Response(response.status_code, headers=_response_headers(response.headers),
                               content=content, request=request, extensions=_extensions(response.reason))


class _AsyncBodyStream(httpx2.AsyncByteStream):
    """A streamed AsyncUpstreamResponse body as an httpx2 async byte stream.

    Iterating it again (as `_BodyStream` above) continues where the last iteration stopped: the openai
    SDK stops reading at `[DONE]` and then drains `response.stream` so the
    connection can go back to the pool. A fresh iteration of the body there
    would fail (it is already being streamed), the drain would give up and
    the connection be closed half-read: one new connection per stream.
    """

    def __init__(self, response: Any, upstream_name: str) -> None:
        self._response = response
        self._upstream = upstream_name
        self._chunks: AsyncIterator[bytes] | None = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._chunks is None:
            self._chunks = self._response.aiter_body()
        try:
            async for chunk in self._chunks:
                yield chunk
        except (httpx2.TransportError, OSError) as err:
            failure = _stream_failure(err, self._upstream)
            self._response.stream_failure = failure  # the endpoint's failure when the body closes
            raise failure from None

    async def aclose(self) -> None:
        await self._response.aclose()


class AsyncUpstreamTransport(httpx2.AsyncBaseTransport):
    """Send httpx2 requests through `await resilience.upstream(name).arequest(...)`."""

    def __init__(self, upstream_name: str) -> None:
        self.upstream_name = upstream_name

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        body = await request.aread()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _REQUEST_DROP}
        params: list[tuple[str, Any]] = list(request.url.params.multi_items())
        stream = _wants_stream(request, body)
        response = await upstream(self.upstream_name).arequest(
            request.method, request.url.path, params=params or None, headers=headers,
            data=body or None, stream=stream,
        )
        extensions = _extensions(response.reason_phrase)
        if stream and response.status_code < 400 and _is_json(response.headers):
            try:
                content = _completion_as_events(await response.aread())
            finally:
                await response.aclose()
            return httpx2.Response(response.status_code,
                                   headers=_response_headers(response.headers, as_events=True),
                                   content=content,
                                   request=request, extensions=extensions)
        if stream:
            return httpx2.Response(response.status_code, headers=_response_headers(response.headers),
                                   stream=_AsyncBodyStream(response, self.upstream_name), request=request,
                                   extensions=extensions)
        return httpx2.Response(response.status_code, headers=_response_headers(response.headers),
                               content=response.content, request=request, extensions=extensions)
