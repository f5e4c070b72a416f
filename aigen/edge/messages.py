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

Errors: every body comes from aigen.edge.errors in Anthropic's shape
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
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from aigen.conf import aigen_settings
from aigen.edge.auth import caller_bind, request_authenticate, token_refused
from aigen.edge.errors import ANTHROPIC, ProviderAnswered, Refusal, error_event, error_response, provider_json
from aigen.edge.metering import answer_settle, caller_admit, caller_limited, spend_left_unread, stream_settle
from aigen.edge.openai import models
from aigen.edge.parsing import body_json
from aigen.edge.streaming import EventStreamResponse
from aigen.edge.throttling import GenerateThrottle
from aigen.edge.tokens import atoken_user
from aigen.exceptions import CallerThrottled
from aigen.generation import translate
from aigen.generation.anthropic_wire import ANTHROPIC_MESSAGES
from aigen.generation.bridges import DEFAULT_VERSION, MESSAGES_PATH, MESSAGES_WIRE, VERSION_HEADER
from aigen.generation.spend import Spend
from resilience import exceptions as errors
from resilience.client import upstream_client
from resilience.client.openai_wire import OPENAI_CHAT
from resilience.client.stream import SupervisedStream
from resilience.exceptions import AppError
from resilience.telemetry.slow import slow_expected


class _Call:
    """One Messages request as parsed at the edge: the caller's body, its
    model, the upstream that serves it, and the version to echo. Its steps
    raise `AppError`s; the views render them once, in Anthropic's shape."""

    def __init__(self, request: HttpRequest) -> None:
        self.request = request
        self.version = request.META.get("HTTP_ANTHROPIC_VERSION", "")  # VERSION_HEADER, as META keys it
        self.body: dict[str, Any] = {}
        self.throttle = GenerateThrottle()

    def error(self, err: AppError) -> HttpResponse:
        return self.answered(error_response(err, shape=ANTHROPIC, request=self.request))

    async def admit(self) -> None:
        """Authenticate and throttle the caller (401/403/429)."""
        key = self.request.META.get("HTTP_X_API_KEY", "").strip()
        if key:
            user = await atoken_user(key)
            if user is None:
                refusal = await sync_to_async(token_refused)(self.request, "invalid x-api-key")
                wait = getattr(refusal, "wait", None)
                if wait is not None:
                    raise Refusal("throttled", str(refusal.detail), 429, retry_after=wait)
                raise Refusal("authentication_failed", "invalid x-api-key", 401)
            caller_bind(user)
        else:
            user = await request_authenticate(self.request)  # 401, 403 or the failure throttle's 429
        self.request.user = user
        # A caller with limits has the throttle counted by its admission (one round trip).
        if not caller_limited(user) and not await self.throttle.aallow(self.request):
            raise self.throttled(self.throttle.wait())

    @staticmethod
    def throttled(wait: float) -> Refusal:
        return Refusal("rate_limit_exceeded", "Rate limit reached for the gateway.", 429,
                       retry_after=wait or 1.0)

    async def spend(self) -> Spend:
        """The caller's admission against its own limits (429 past them): its `Spend`."""
        body = self.body
        try:
            return await caller_admit(self.request, model=body["model"],
                                      prompt=[body.get("system"), body.get("messages")],
                                      max_tokens=body.get("max_tokens"), throttle=self.throttle)
        except CallerThrottled as err:
            raise self.throttled(err.retry_after or 0.0) from None

    def parse(self) -> None:
        """Keep the body when it is a Messages request, else 400/413/415."""
        body = body_json(self.request)  # 413, 415 or a body that is not JSON
        if not isinstance(body, dict):
            raise Refusal(None, "The body must be a JSON object.", 400)
        model = body.get("model")
        if not isinstance(model, str) or not model.strip():
            raise Refusal(None, "model: Field required", 400)
        if not isinstance(body.get("stream", False), bool):
            raise Refusal(None, "stream: Input should be a valid boolean", 400)
        self.body = body

    async def upstream(self) -> str:
        """The upstream that serves the body's model (404 when none does)."""
        name = (await models.get()).get(self.body["model"])
        if name is None:
            raise Refusal("model_not_found", f"model: {self.body['model']}", 404)
        return name

    def answered(self, response: HttpResponse) -> HttpResponse:
        if self.version:
            response[VERSION_HEADER] = self.version
        return response


def _messages_checked(body: dict[str, Any]) -> None:
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise Refusal(None, "max_tokens: Field required (a positive integer)", 400)


#: The end of the items `_with_pings` relays (with the failure that ended them, if any).
_END = object()


async def _with_pings(events: AsyncIterator[Any], interval: float) -> AsyncIterator[Any]:
    """`events`, with None after every `interval` seconds of silence.

    One task reads `events`, at most one item ahead (a queue of one keeps the
    provider's pace the caller's); one timer, re-armed from the last item, finds
    the silences. Per item that is a queue hand-over: a task and a timeout per
    item (`asyncio.wait`) cost a fifth of a Messages stream's CPU."""
    loop = asyncio.get_running_loop()
    items: asyncio.Queue[tuple[Any, BaseException | None]] = asyncio.Queue(maxsize=1)
    last = loop.time()

    async def pump() -> None:
        try:
            async for item in events:
                await items.put((item, None))
        except Exception as failure:  # the caller's to hear, in order, after what came before
            await items.put((_END, failure))
        else:
            await items.put((_END, None))

    def silent() -> None:
        nonlocal last, timer
        now = loop.time()
        if now >= last + interval:
            if items.empty():  # else an item waits for the caller: no ping needed
                items.put_nowait((None, None))
            last = now
        timer = loop.call_at(last + interval, silent)

    reader = asyncio.ensure_future(pump())
    timer = loop.call_at(last + interval, silent)
    try:
        while True:
            item, failure = await items.get()
            last = loop.time()
            if item is _END:
                if failure is not None:
                    raise failure
                return
            yield item
    finally:
        timer.cancel()
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


def _event_stream(call: _Call, stream: SupervisedStream, model: str, spend: Spend) -> EventStreamResponse:
    writer = translate.AnthropicStreamWriter(model=model)

    async def events() -> AsyncIterator[bytes]:
        try:
            # aclosing: a caller gone mid-stream cancels the pending read before the stream is closed.
            pinged = _with_pings(stream, aigen_settings.MESSAGES_PING_INTERVAL)
            async with contextlib.aclosing(pinged) as items:
                async for event in items:
                    if event is None:
                        yield b"".join(writer.ping())
                        continue
                    chunk = OPENAI_CHAT.with_text(event.data, event.text) if event.spliced else event.data
                    frames = writer.feed(chunk)
                    if frames:  # one write per provider chunk, however many events it makes
                        yield b"".join(frames)
            end = b"".join(writer.finish())
        except errors.UpstreamError as err:
            end = error_event(err, shape=ANTHROPIC)
        except Exception as err:  # whatever broke the stream, the caller must hear of it
            end = error_event(AppError(f"the stream broke: {type(err).__name__}"), shape=ANTHROPIC)
        finally:
            await stream.aclose()
            await stream_settle(spend, stream)
        answer.end_follows()  # settled: the last events go with the body's end
        yield end

    # The request's end settles it if the generator did not (never started, or closed later).
    spend_left_unread(lambda: stream_settle(spend, stream))
    answer = EventStreamResponse(events())
    return call.answered(answer)


async def _relay(call: _Call, name: str, spend: Spend) -> HttpResponse:
    """The call through the upstream's client in Anthropic's format (each
    attempt translated to OpenAI's when its endpoint speaks it), answered in
    Anthropic's shape."""
    try:
        _messages_checked(call.body)
        translate.openai_request(call.body)  # the pool may send it either way: refused here, not mid-call
    except translate.TranslationError as invalid:
        raise Refusal(None, invalid.message, 400) from None
    client = upstream_client(name)
    headers = {VERSION_HEADER: call.version or DEFAULT_VERSION}
    try:
        if call.body.get("stream"):
            stream = await client.astream(MESSAGES_PATH, json=call.body, codec=ANTHROPIC_MESSAGES,
                                          headers=headers, wire=MESSAGES_WIRE)
            return _event_stream(call, stream, call.body["model"], spend)
        # Cached and single-flighted as the upstream's policy says, keyed on the call in this format.
        response = await client.arequest("POST", MESSAGES_PATH, json=call.body, raise_for_status=False,
                                         headers=headers, wire=MESSAGES_WIRE)
    except errors.UpstreamHTTPError as err:  # the provider's own error answer to a stream request
        raise ProviderAnswered(err.response, wire="anthropic") from None
    if response.status_code >= 400:
        raise ProviderAnswered(response, wire="anthropic")  # unbilled: `messages` frees the reservation
    # Parsed once, before anything is billed (a 200 that is not a JSON object is the provider's
    # failure: 502, unbilled); the same parse gives the settlement its usage. The answer goes out
    # as the client handed it over (the provider's bytes, or the bridge's rendering of a translated
    # attempt), never re-encoded.
    answer = provider_json(response)
    if not isinstance(answer, dict):
        raise Refusal("provider_error", "the provider's answer is not a JSON object", 502)
    await answer_settle(spend, response, answer)
    return call.answered(HttpResponse(response.content, status=response.status_code,
                                      content_type="application/json"))


async def _admitted(call: _Call) -> str:
    """The upstream of an admitted, parsed call (else its `AppError`)."""
    if call.request.method != "POST":
        raise Refusal("method_not_allowed", f"Method {call.request.method} not allowed.", 405, allow="POST")
    await call.admit()
    call.parse()
    return await call.upstream()


@slow_expected  # answers take seconds by design: not "slow requests"
@csrf_exempt  # token requests carry no CSRF token; session requests are checked in request_authenticate
async def messages(request: HttpRequest) -> HttpResponse:
    """POST /v1/messages."""
    call = _Call(request)
    try:
        name = await _admitted(call)
        spend = await call.spend()
    except AppError as err:
        return call.error(err)
    try:
        response = await _relay(call, name, spend)
    except AppError as err:
        await spend.asettle(None, billed=False)  # no answer: the reservation is freed
        return call.error(err)
    except BaseException:
        await spend.asettle(None, billed=False)
        raise
    if not response.streaming:  # settled from its usage already; an error's reservation is freed
        await spend.asettle(None, billed=False)
    return response


def count_estimate(body: dict[str, Any]) -> int:
    """Input tokens of a Messages request, estimated as the gateway's other
    counts are (about four characters a token) over what would be sent."""
    payload = translate.openai_request({**body, "stream": False})
    sent = json.dumps([payload["messages"], payload.get("tools") or []], ensure_ascii=False)
    return max(1, math.ceil(len(sent) / 4))


@csrf_exempt
async def count_tokens(request: HttpRequest) -> HttpResponse:
    """POST /v1/messages/count_tokens: `{"input_tokens": N}` (an estimate)."""
    call = _Call(request)
    try:
        await _admitted(call)
        tokens = count_estimate(call.body)
    except translate.TranslationError as invalid:
        return call.error(Refusal(None, invalid.message, 400))
    except AppError as err:
        return call.error(err)
    return call.answered(JsonResponse({"input_tokens": tokens}))
