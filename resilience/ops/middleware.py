"""The service's own request handling: request ids, timing, compression.

In `settings.MIDDLEWARE`, in this order and above everything else:

- `RequestIdMiddleware`: takes the caller's `X-Request-ID` when it is sane
  (1-64 characters of `A-Za-z0-9._-`) or makes one; binds it to
  `resilience.client.context.current_request_id` while the view runs (and while a
  streaming body is produced: around each part, or once around the whole send
  by a server that says it does), so the call logs of upstream calls the request
  causes carry it; echoes it in the `X-Request-ID` response header.
- `RequestTimingMiddleware`: request latency by view for /metrics; a request
  slower than `SLOW_REQUEST_SECONDS` is logged once, with its id and path.
  Time is measured until the response is ready (for a streaming response,
  until its headers).
- `CompressionMiddleware`: brotli or gzip, negotiated from Accept-Encoding
  with q-values (brotli wins a tie; `q=0` refuses), for text-like bodies of at
  least `COMPRESS_MIN_SIZE` bytes, with `Vary: Accept-Encoding`. Streaming
  bodies are compressed chunk by chunk, each chunk flushed, so server-sent
  events still arrive one by one. Responses already encoded, partial (206),
  marked `Cache-Control: no-transform`, or not text-like pass untouched.
  Gzip bodies carry Django's random-length filename padding against BREACH.
- `StaticFilesMiddleware`: WhiteNoise, below `SecurityMiddleware`.

Each runs in the mode of the stack (sync under WSGI, async under ASGI):
under ASGI one sync-only middleware sends every request through a thread and
back, which costs more CPU than the rest of a cache hit.
"""
from __future__ import annotations

import logging
import re
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

import brotli
from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.http import FileResponse, HttpRequest, HttpResponseBase
from django.middleware.gzip import GZipMiddleware
from django.utils.cache import patch_vary_headers
from django.utils.text import compress_string
from whitenoise.middleware import WhiteNoiseMiddleware

from resilience.client.context import current_caller, current_priority, current_request_id
from resilience.conf import resilience_settings
from resilience.telemetry import metrics
from resilience.telemetry.slow import slow_expected_is

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
BROTLI_QUALITY = 5  # 11 (the default) is for static assets; dynamic bodies need speed
GZIP_LEVEL = 6
COMPRESSIBLE_TYPES = frozenset({
    "application/json", "application/javascript", "application/x-javascript", "application/xml",
    "application/vnd.oai.openapi", "application/openmetrics-text", "image/svg+xml",
})

GetResponse = Callable[[HttpRequest], HttpResponseBase]


# -- request id ------------------------------------------------------------------------------------
def request_id_from(value: str | None) -> str:
    """The caller's id when sane, else a new one (32 hex characters)."""
    if value and SANE_REQUEST_ID.fullmatch(value):
        return value
    return uuid.uuid4().hex


#: Set true on a request by a server that binds `request.request_id` to `current_request_id`
#: while it sends the response (project.asgi_handler): its streaming body needs no wrapper
#: that binds the id around every part.
BOUND_WHILE_SENT = "request_id_bound_while_sent"


def _bound_sync(content: Iterable[bytes], request_id: str) -> Iterator[bytes]:
    iterator = iter(content)
    while True:
        token = current_request_id.set(request_id)
        try:
            chunk = next(iterator)
        except StopIteration:
            return
        finally:
            current_request_id.reset(token)
        yield chunk


async def _bound_async(content: AsyncIterator[bytes], request_id: str) -> AsyncIterator[bytes]:
    iterator = aiter(content)
    while True:
        token = current_request_id.set(request_id)
        try:
            chunk = await anext(iterator)
        except StopAsyncIteration:
            return
        finally:
            current_request_id.reset(token)
        yield chunk


class _BothModes:
    """Middleware that runs in the mode of the stack it is in: under ASGI a
    sync-only middleware would send every request through a thread and back.
    Subclasses write `before(request)` and `after(request, response, state)`."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self._acall(request)
        state = self.before(request)
        try:
            response = self.get_response(request)
        finally:
            self.release(state)
        return self.after(request, response, state)

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        state = self.before(request)
        try:
            response = await self.get_response(request)
        finally:
            self.release(state)
        return self.after(request, response, state)

    def before(self, request: HttpRequest) -> Any:
        return None

    def release(self, state: Any) -> None:
        """Undo what `before` set up around the call (even when it raised)."""

    def after(self, request: HttpRequest, response: HttpResponseBase, state: Any) -> HttpResponseBase:
        return response


class RequestIdMiddleware(_BothModes):
    def before(self, request: HttpRequest) -> Any:
        request_id = request_id_from(request.META.get("HTTP_X_REQUEST_ID"))
        request.request_id = request_id  # type: ignore[attr-defined]
        # No caller (and the default priority) until authentication names one: a thread
        # serving requests one after another under WSGI must not lend one request's caller
        # or priority to the next.
        return (request_id, current_request_id.set(request_id), current_caller.set(None),
                current_priority.set("normal"))

    def release(self, state: Any) -> None:
        current_priority.reset(state[3])
        current_caller.reset(state[2])
        current_request_id.reset(state[1])

    def after(self, request: HttpRequest, response: HttpResponseBase, state: Any) -> HttpResponseBase:
        request_id = state[0]
        response[REQUEST_ID_HEADER] = request_id
        # A streaming body is produced after we return: keep the id bound
        # while it is (a streamed generation calls its upstream then), unless
        # the server binds it while it sends the body (`BOUND_WHILE_SENT`).
        # Files cause no upstream calls and keep their sendfile fast path.
        if (response.streaming and not isinstance(response, FileResponse)
                and not getattr(request, BOUND_WHILE_SENT, False)):
            if response.is_async:
                response.streaming_content = _bound_async(response.streaming_content, request_id)
            else:
                response.streaming_content = _bound_sync(response.streaming_content, request_id)
        return response


# -- timing ----------------------------------------------------------------------------------------
def view_label(request: HttpRequest) -> str:
    """A bounded label for metrics: the URL name (or route), never the raw path."""
    match = getattr(request, "resolver_match", None)
    if match is None:
        return "<unmatched>"
    return match.view_name or match.route or "<unnamed>"


class RequestTimingMiddleware(_BothModes):
    timer = staticmethod(time.perf_counter)  # test seam

    def before(self, request: HttpRequest) -> Any:
        return self.timer()

    def after(self, request: HttpRequest, response: HttpResponseBase, state: Any) -> HttpResponseBase:
        elapsed = self.timer() - state
        try:
            metrics.request_observe(view=view_label(request), method=request.method or "",
                                    status=response.status_code, seconds=elapsed)
        except Exception:  # metrics must never fail a request
            logger.exception("metrics: could not observe a request")
        threshold = resilience_settings.SLOW_REQUEST_SECONDS
        match = getattr(request, "resolver_match", None)
        if match is not None and slow_expected_is(match.func):
            threshold = 0  # a view that waits on a provider by design (AI generation)
        if threshold and elapsed > threshold:
            logger.warning("slow request: %s %s took %.3f s (status %s, request id %s)", request.method,
                           request.path, elapsed, response.status_code,
                           getattr(request, "request_id", None) or current_request_id.get() or "-")
        return response


# -- compression ------------------------------------------------------------------------------------
def accepted_encoding(header: str) -> str | None:
    """`br`, `gzip` or None (identity) for an Accept-Encoding header value.

    The highest q-value wins, brotli on a tie; `q=0` means "not acceptable";
    `*` stands for every coding not named; a malformed q counts as 0.
    """
    weights: dict[str, float] = {}
    for part in header.split(","):
        coding, *params = part.split(";")
        coding = coding.strip().lower()
        if not coding or coding in weights:
            continue
        weight = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    weight = min(max(float(value.strip()), 0.0), 1.0)
                except ValueError:
                    weight = 0.0
        weights[coding] = weight
    weights.setdefault("gzip", weights.get("x-gzip", weights.get("*", 0.0)))
    weights.setdefault("br", weights.get("*", 0.0))
    best = max(("br", "gzip"), key=lambda c: (weights[c], c == "br"))
    return best if weights[best] > 0 else None


def _compressible(response: HttpResponseBase) -> bool:
    if response.status_code < 200 or response.status_code in (204, 206, 304):
        return False
    if response.has_header("Content-Encoding") or response.has_header("Content-Range"):
        return False
    if "no-transform" in response.get("Cache-Control", "").lower():
        return False
    media = response.get("Content-Type", "").split(";")[0].strip().lower()
    return (media.startswith("text/") or media in COMPRESSIBLE_TYPES
            or media.endswith("+json") or media.endswith("+xml"))


class _Coder:
    """Compresses a stream chunk by chunk, flushing each so it can be sent."""

    def __init__(self, coding: str) -> None:
        if coding == "br":
            self._br = brotli.Compressor(quality=BROTLI_QUALITY)
        else:
            self._br = None
            self._gz = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)  # 31: gzip container

    def chunk(self, data: bytes) -> bytes:
        if self._br is not None:
            return self._br.process(data) + self._br.flush()
        return self._gz.compress(data) + self._gz.flush(zlib.Z_SYNC_FLUSH)

    def end(self) -> bytes:
        if self._br is not None:
            return self._br.finish()
        return self._gz.flush(zlib.Z_FINISH)


def _compress_sync(content: Iterable[bytes], coding: str) -> Iterator[bytes]:
    coder = _Coder(coding)
    for data in content:
        if out := coder.chunk(data):
            yield out
    yield coder.end()


async def _compress_async(content: AsyncIterator[bytes], coding: str) -> AsyncIterator[bytes]:
    coder = _Coder(coding)
    async for data in content:
        if out := coder.chunk(data):
            yield out
    yield coder.end()


class CompressionMiddleware(_BothModes):
    def after(self, request: HttpRequest, response: HttpResponseBase, state: Any) -> HttpResponseBase:
        return compress_response(request, response)


class StaticFilesMiddleware(WhiteNoiseMiddleware):
    """WhiteNoise in either mode: only a request for a static file goes
    through WhiteNoise's sync code (in a thread under ASGI); every other
    request passes straight on."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: GetResponse) -> None:
        super().__init__(get_response)
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self._acall(request)
        return super().__call__(request)

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        if self.autorefresh:
            static_file = await sync_to_async(self.find_file)(request.path_info)
        else:
            static_file = self.files.get(request.path_info)
        if static_file is not None:
            return await sync_to_async(self.serve)(static_file, request)
        return await self.get_response(request)


def compress_response(request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
    """`response`, compressed in place when the request and the body allow it."""
    if not _compressible(response):
        return response
    if not response.streaming and len(response.content) < int(resilience_settings.COMPRESS_MIN_SIZE):
        return response
    patch_vary_headers(response, ("Accept-Encoding",))
    coding = accepted_encoding(request.META.get("HTTP_ACCEPT_ENCODING", ""))
    if coding is None:
        return response
    if response.streaming:
        if response.is_async:
            response.streaming_content = _compress_async(response.streaming_content, coding)
        else:
            response.streaming_content = _compress_sync(response.streaming_content, coding)
        del response["Content-Length"]
    else:
        original = response.content
        if coding == "br":
            body = brotli.compress(original, quality=BROTLI_QUALITY)
        else:
            body = compress_string(original, max_random_bytes=GZipMiddleware.max_random_bytes)
        if len(body) >= len(original):
            return response
        response.content = body
        response["Content-Length"] = str(len(body))
    # The bytes differ from the identity body's: a strong ETag would lie.
    etag = response.get("ETag")
    if etag and etag.startswith('"'):
        response["ETag"] = "W/" + etag
    response["Content-Encoding"] = coding
    return response
