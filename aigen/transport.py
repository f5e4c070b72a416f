"""An httpx2 transport that sends the openai SDK's requests through a
resilience upstream client.

The SDK is built with `base_url=SDK_BASE_URL` (a placeholder with no path) and
`max_retries=0`; this transport takes each request's path ("/chat/completions")
and hands it to `upstream(name).request(...)`, which joins it to the policy's
base URL and applies its timeouts, retries, circuit breaker and call log. The
policy in the admin is therefore the single source of truth for where the SDK
goes and how hard it tries.

On failure: the resilient client's `UpstreamError` kinds (breaker open, timeout,
retries exhausted, ...) propagate unchanged through the SDK, which only wraps
httpx errors; a stream that breaks while its body is read raises
`UpstreamTimeout` or `UpstreamConnectionError` the same way.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx2
import requests
from urllib3.exceptions import ReadTimeoutError

from resilience import upstream
from resilience.exceptions import UpstreamConnectionError, UpstreamTimeout

#: The SDK's base URL: no path, so the SDK's paths are relative to the policy's.
SDK_BASE_URL = "http://openai.upstream"

# Hop-by-hop or recomputed by requests; Host would name the placeholder.
# Accept-Encoding is left to requests, which knows what it can decode.
_REQUEST_DROP = frozenset({"host", "content-length", "connection", "transfer-encoding", "accept-encoding",
                           "keep-alive", "upgrade", "te", "trailer"})
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


class _BodyStream(httpx2.SyncByteStream):
    """A streamed requests.Response body as an httpx2 byte stream."""

    def __init__(self, response: requests.Response, upstream_name: str) -> None:
        self._response = response
        self._upstream = upstream_name

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
        try:
            yield from self._chunks()
        except (requests.exceptions.ConnectionError, ReadTimeoutError) as err:
            if isinstance(err, ReadTimeoutError) or "timed out" in str(err).lower():
                raise UpstreamTimeout(f"{self._upstream}: read timed out while streaming",
                                      upstream=self._upstream) from err
            raise UpstreamConnectionError(f"{self._upstream}: connection broke while streaming",
                                          upstream=self._upstream) from err
        except (requests.exceptions.RequestException, OSError) as err:
            raise UpstreamConnectionError(f"{self._upstream}: stream broke: {type(err).__name__}",
                                          upstream=self._upstream) from err

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
        response_headers = [(k, v) for k, v in response.headers.items() if k.lower() not in _RESPONSE_DROP]
        extensions = {"http_version": b"HTTP/1.1", "reason_phrase": (response.reason or "").encode("latin-1",
                                                                                                  "replace")}
        if stream:
            return httpx2.Response(response.status_code, headers=response_headers,
                                   stream=_BodyStream(response, self.upstream_name), request=request,
                                   extensions=extensions)
        try:
            content = response.content
        finally:
            response.close()
        return httpx2.Response(response.status_code, headers=response_headers, content=content,
                               request=request, extensions=extensions)
