"""The Anthropic Messages front door: `POST /v1/messages` (plain and
streamed) and `POST /v1/messages/count_tokens`, so the `anthropic` SDK and
Claude clients use the gateway by changing their base URL.

A codec over the OpenAI front door's request path: the body is parsed and
checked once here and handed, in Anthropic's format with its wire bridge
(aigen.generation.bridges.MESSAGES_WIRE), to the upstream that serves its
`model` (`arequest` / `astream`: policy, deadline, cache and single-flight
for plain calls, breakers, bulkhead, endpoint choice and failover, call log,
rollups, metrics; streams under the stream supervisor with its timers and
continuations). Each attempt on an OpenAI-format endpoint is translated
there and back by the client's attempt step, so a pool may mix formats; the
answer reaches this view in Anthropic's format and is rendered once.

Authentication: the project's API tokens, as `x-api-key` (what the SDK
sends) or `Authorization: Bearer`. `anthropic-version` is accepted (any
value) and echoed on every answer.

Streams follow Anthropic's event sequence (`message_start`, content blocks
with `text_delta` / `input_json_delta`, `message_delta` with the stop reason
and usage, `message_stop`), a `ping` after `MESSAGES_PING_INTERVAL` seconds
of silence, and, when the answer cannot go on, one `event: error` with
Anthropic's error object (`api_error`; `overloaded_error` when no endpoint
could serve) instead of `message_stop`: never a silent truncation.

Errors: every body comes from `anthropic_error_response`, Anthropic's shape
`{"type": "error", "error": {"type", "message"}}`: 400
`invalid_request_error` naming the field, 401, 403, 404, 413
`request_too_large`, 429 `rate_limit_error` with `retry-after`, 500
`api_error`, 529 `overloaded_error` when every endpoint is open or full
(breaker open, bulkhead or pool full, upstream disabled) with `retry-after`.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import AsyncIterator
from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from aigen.conf import aigen_settings
from aigen.edge import openai as openai_views
from aigen.edge.auth import request_authenticate, token_refused
from aigen.edge.parsing import body_json
from aigen.edge.throttling import GenerateThrottle
from aigen.edge.tokens import atoken_user
from aigen.generation import translate
from aigen.generation.anthropic_wire import ANTHROPIC_MESSAGES
from aigen.generation.bridges import DEFAULT_VERSION, MESSAGES_PATH, MESSAGES_WIRE, VERSION_HEADER
from resilience import exceptions as errors
from resilience.client import upstream_client
from resilience.client.context import current_caller
from resilience.client.openai_wire import OPENAI_CHAT
from resilience.client.stream import SupervisedStream
from resilience.exceptions import AppError
from resilience.telemetry.slow import slow_expected

#: The UpstreamError codes that mean "no endpoint could take the call": Anthropic's 529.
_OVERLOADED = {"breaker_open", "bulkhead_full", "pool_exhausted", "upstream_disabled"}
_KINDS = frozenset(translate.ERROR_TYPES.values())


def anthropic_error_response(status: int, message: str, *, kind: str | None = None,
                             retry_after: float | None = None, version: str = "") -> JsonResponse:
    """Every error body of this front door: Anthropic's shape with `status`."""
    response = JsonResponse(translate.anthropic_error(status, message, kind=kind), status=status)
    if retry_after is not None:
        response["retry-after"] = str(max(1, math.ceil(retry_after)))
    if version:
        response[VERSION_HEADER] = version
    response._has_been_logged = True  # type: ignore[attr-defined]  # counted, not logged line by line
    return response


def upstream_failure(err: errors.UpstreamError) -> tuple[int, str]:
    """(status, Anthropic error type) of a call that got no usable answer."""
    if err.code in _OVERLOADED:
        return 529, "overloaded_error"
    if err.status == 504:
        return 504, "timeout_error"
    if err.status == 404:
        return 404, "not_found_error"
    return (err.status, "api_error") if err.status >= 500 else (err.status, "invalid_request_error")


class _Call:
    """One Messages request as parsed at the edge: the caller's body, its
    model, the upstream that serves it, and the version to echo."""

    def __init__(self, request: HttpRequest) -> None:
        self.request = request
        self.version = request.headers.get(VERSION_HEADER, "")
        self.body: dict[str, Any] = {}

    def error(self, status: int, message: str, **kwargs: Any) -> JsonResponse:
        return anthropic_error_response(status, message, version=self.version, **kwargs)

    async def refused(self) -> HttpResponse | None:
        """None when the caller may go on, else the 401/403/429 answer."""
        key = self.request.headers.get("x-api-key", "").strip()
        if key:
            user = await atoken_user(key)
            if user is None:
                refusal = await sync_to_async(token_refused)(self.request, "invalid x-api-key")
                wait = getattr(refusal, "wait", None)
                if wait is not None:
                    return self.error(429, str(refusal.detail), retry_after=wait)
                return self.error(401, "invalid x-api-key")
            current_caller.set(user.pk)
        else:
            try:
                user = await request_authenticate(self.request)
            except AppError as refusal:  # 401, 403 or the failure throttle's 429
                return self.error(refusal.status, refusal.message, retry_after=refusal.retry_after)
        self.request.user = user
        throttle = GenerateThrottle()
        if not await sync_to_async(throttle.allow_request)(self.request, None):  # a cache call: off the loop
            return self.error(429, "Rate limit reached for the gateway.", retry_after=throttle.wait() or 1.0)
        return None

    def parsed(self) -> HttpResponse | None:
        """None when the body is a Messages request, else the 400/413/415."""
        try:
            body = body_json(self.request)
        except AppError as refusal:  # 413, 415 or a body that is not JSON
            return self.error(refusal.status, refusal.message)
        if not isinstance(body, dict):
            return self.error(400, "The body must be a JSON object.")
        model = body.get("model")
        if not isinstance(model, str) or not model.strip():
            return self.error(400, "model: Field required")
        if not isinstance(body.get("stream", False), bool):
            return self.error(400, "stream: Input should be a valid boolean")
        self.body = body
        return None

    async def upstream(self) -> tuple[str | None, HttpResponse | None]:
        name = (await openai_views.models.get()).get(self.body["model"])
        if name is None:
            return None, self.error(404, f"model: {self.body['model']}")
        return name, None

    def answered(self, response: HttpResponse) -> HttpResponse:
        if self.version:
            response[VERSION_HEADER] = self.version
        return response


def _messages_checked(body: dict[str, Any]) -> None:
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise translate.TranslationError("max_tokens", "max_tokens: Field required (a positive integer)")


def _provider_error(call: _Call, response: Any) -> HttpResponse:
    """The provider's error answer, in Anthropic's shape with its status."""
    try:
        error = json.loads(response.content).get("error") or {}
        message = str(error.get("message") or "")
    except (ValueError, AttributeError):
        error, message = {}, ""
    status = response.status_code
    retry = response.headers.get("Retry-After")
    kind = error.get("type") if error.get("type") in _KINDS else None  # an Anthropic provider's own
    return call.error(status, message or f"the provider answered {status}", kind=kind,
                      retry_after=float(retry) if retry and retry.isdigit() else None)


def _failure(call: _Call, err: errors.UpstreamError) -> HttpResponse:
    status, kind = upstream_failure(err)
    return call.error(status, err.message, kind=kind, retry_after=err.retry_after)


async def _with_pings(events: AsyncIterator[Any], interval: float) -> AsyncIterator[Any]:
    """`events`, with None after every `interval` seconds of silence."""
    iterator = events.__aiter__()
    pending: asyncio.Task[Any] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(iterator.__anext__())
            done, _ = await asyncio.wait({pending}, timeout=interval)
            if not done:
                yield None
                continue
            try:
                item = pending.result()
            except StopAsyncIteration:
                return
            finally:
                pending = None
            yield item
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await pending


def _event_stream(call: _Call, stream: SupervisedStream, model: str) -> StreamingHttpResponse:
    writer = translate.AnthropicStreamWriter(model=model)

    async def events() -> AsyncIterator[bytes]:
        try:
            # aclosing: a caller gone mid-stream cancels the pending read before the stream is closed.
            pinged = _with_pings(stream, aigen_settings.MESSAGES_PING_INTERVAL)
            async with contextlib.aclosing(pinged) as items:
                async for event in items:
                    if event is None:
                        for frame in writer.ping():
                            yield frame
                        continue
                    chunk = OPENAI_CHAT.with_text(event.data, event.text) if event.spliced else event.data
                    for frame in writer.feed(chunk):
                        yield frame
            for frame in writer.finish():
                yield frame
        except errors.UpstreamError as err:
            status, kind = upstream_failure(err)
            yield translate.sse("error", translate.anthropic_error(status, err.message, kind=kind))
        except Exception as err:  # whatever broke the stream, the caller must hear of it
            broke = translate.anthropic_error(500, f"the stream broke: {type(err).__name__}")
            yield translate.sse("error", broke)
        finally:
            await stream.aclose()

    answer = StreamingHttpResponse(events(), content_type="text/event-stream; charset=utf-8")
    answer["Cache-Control"] = "no-cache, no-transform"
    answer["X-Accel-Buffering"] = "no"
    return call.answered(answer)


async def _relay(call: _Call, name: str) -> HttpResponse:
    """The call through the upstream's client in Anthropic's format (each
    attempt translated to OpenAI's when its endpoint speaks it), answered in
    Anthropic's shape."""
    try:
        _messages_checked(call.body)
        translate.openai_request(call.body)  # the pool may send it either way: refused here, not mid-call
    except translate.TranslationError as invalid:
        return call.error(400, invalid.message)
    client = upstream_client(name)
    headers = {VERSION_HEADER: call.version or DEFAULT_VERSION}
    try:
        if call.body.get("stream"):
            stream = await client.astream(MESSAGES_PATH, json=call.body, codec=ANTHROPIC_MESSAGES,
                                          headers=headers, wire=MESSAGES_WIRE)
            return _event_stream(call, stream, call.body["model"])
        # Cached and single-flighted as the upstream's policy says, keyed on the call in this format.
        response = await client.arequest("POST", MESSAGES_PATH, json=call.body, raise_for_status=False,
                                         headers=headers, wire=MESSAGES_WIRE)
    except errors.UpstreamHTTPError as err:  # the provider's own error answer to a stream request
        return _provider_error(call, err.response)
    except errors.UpstreamError as err:
        return _failure(call, err)
    if response.status_code >= 400:
        return _provider_error(call, response)
    try:
        answer = json.loads(response.content)
    except ValueError:
        return call.error(502, "the provider's answer is not JSON", kind="api_error")
    return call.answered(JsonResponse(answer))


async def _admitted(request: HttpRequest) -> tuple[_Call, HttpResponse | None]:
    call = _Call(request)
    if request.method != "POST":
        response = call.error(405, f"Method {request.method} not allowed.")
        response["Allow"] = "POST"
        return call, response
    return call, (await call.refused()) or call.parsed()


@slow_expected  # answers take seconds by design: not "slow requests"
@csrf_exempt  # token requests carry no CSRF token; session requests are checked in request_authenticate
async def messages(request: HttpRequest) -> HttpResponse:
    """POST /v1/messages."""
    call, refused = await _admitted(request)
    if refused is not None:
        return refused
    name, missing = await call.upstream()
    if missing is not None:
        return missing
    return await _relay(call, name or "")


def count_estimate(body: dict[str, Any]) -> int:
    """Input tokens of a Messages request, estimated as the gateway's other
    counts are (about four characters a token) over what would be sent."""
    payload = translate.openai_request({**body, "stream": False})
    sent = json.dumps([payload["messages"], payload.get("tools") or []], ensure_ascii=False)
    return max(1, math.ceil(len(sent) / 4))


@csrf_exempt
async def count_tokens(request: HttpRequest) -> HttpResponse:
    """POST /v1/messages/count_tokens: `{"input_tokens": N}` (an estimate)."""
    call, refused = await _admitted(request)
    if refused is not None:
        return refused
    _, missing = await call.upstream()
    if missing is not None:
        return missing
    try:
        tokens = count_estimate(call.body)
    except translate.TranslationError as invalid:
        return call.error(400, invalid.message)
    return call.answered(JsonResponse({"input_tokens": tokens}))
