"""The OpenAI-compatible front door: `POST /v1/chat/completions` (plain and
streamed) and `GET /v1/models`, so any OpenAI SDK uses the gateway by
changing its base URL.

Authentication is the project's API tokens (`Authorization: Bearer <key>`,
the same cached lookup as POST /api/ai/generate: aigen.edge.generate), never a
provider key: the provider's credential is the upstream's or its endpoint's
environment variable. The request's `model` picks the upstream that lists
it in `served_models`; the body goes through that upstream's client
(`arequest`: policy, the cache and single-flight for plain calls as the
policy says, endpoint choice and failover, breakers, call log, metrics),
with an endpoint's model override applied to the body it is sent to, and
with the OpenAI bridge (aigen.generation.bridges.CHAT_WIRE): an attempt on
an Anthropic-format endpoint is translated there and back by the client's
attempt step. Async views without DRF: a generation waits on the provider
without holding a thread.

Errors come in OpenAI's shape, `{"error": {"message", "type", "param",
"code"}}`: 400/401/404/405/413/415/429 from the gateway itself, the
provider's own error body when it answered one, and for a call that got no
usable answer (every endpoint out, timeout, connection failure) the status
of the project's error (503 with `Retry-After`, 504, 502) with its code.

Streams are supervised (resilience.client.stream): a stream that breaks
after the provider said 200 (cut, silent past `stream_idle_timeout`, no
first token within `first_token_timeout`, an error event) goes on on
another endpoint, and the caller receives one stream: the provider's chunks
as they were sent while the first attempt serves, then the continuation's
chunks under the first chunk's `id`, one final chunk with `finish_reason`,
the usage chunk when asked for (the provider is always asked for it, for
the usage ledger; a caller that did not ask is not sent it), and `data: [DONE]` (also when the provider
left it out). An endpoint that refuses `stream_options` (400 naming it) when
the caller did not ask for usage is asked again without it and remembered
(resilience.client.stream); that stream brings no usage, and the caller's
budget keeps the estimate reserved at admission while the ledger counts the
call with no tokens (aigen.generation.spend). A caller that asked for usage
itself gets the provider's 400 as it is. When the answer cannot go on, the stream ends with one error
event naming the original failure, `data: {"error": {"message": ...,
"type": "server_error", "code": "stream_interrupted"}}` (`upstream_timeout`
past `stream_max_seconds`), which the OpenAI SDKs raise as an APIError:
never a silent truncation.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncIterator
from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from aigen.edge.auth import request_authenticate
from aigen.edge.errors import OPENAI, ProviderAnswered, Refusal, error_event, error_response, provider_json
from aigen.edge.metering import answer_settle, caller_admit, caller_limited, spend_left_unread, stream_settle
from aigen.edge.parsing import body_json
from aigen.edge.streaming import EventStreamResponse
from aigen.edge.throttling import GenerateThrottle
from aigen.exceptions import CallerThrottled
from aigen.generation.bridges import CHAT_PATH, CHAT_WIRE
from aigen.generation.spend import Spend
from resilience import exceptions as errors
from resilience.client import upstream_client
from resilience.client.ahead import Ahead
from resilience.client.db import given_back
from resilience.client.openai_wire import INCLUDE_USAGE, OPENAI_CHAT
from resilience.client.stream import SupervisedStream
from resilience.conf import resilience_settings
from resilience.exceptions import AppError
from resilience.telemetry.slow import slow_expected

_JSON = {"Content-Type": "application/json"}
_DONE = b"data: [DONE]\n\n"


class _ModelMap:
    """model name -> upstream name, from the enabled upstreams' `served_models`,
    re-read at most every `POLICY_CHECK_INTERVAL` seconds (one query). While
    one request re-reads it, the others use the map read a moment ago: a
    burst arriving as it expires makes one query, not one each (they would
    queue on the one thread that runs the ORM). In the last quarter of its
    interval it is re-read ahead (resilience.client.ahead): the request that
    finds it so starts the query in a thread and goes on with the map."""

    def __init__(self) -> None:
        self._map: dict[str, str] = {}
        self._read_at = -math.inf
        self._loaded = False
        self._refreshing = False
        self._ahead = Ahead("the /v1 model map")

    def clear(self) -> None:
        self._read_at = -math.inf
        self._loaded = False

    @staticmethod
    def _load() -> dict[str, str]:
        from resilience.models import Upstream

        found: dict[str, str] = {}
        for name, served in Upstream.objects.filter(enabled=True).order_by("name").values_list(
                "name", "served_models"):
            for model in served or ():
                found.setdefault(model, name)  # one upstream per model: the first by name
        return found

    def _read(self) -> None:
        """Re-read the map (in a thread: a query), waited for or ahead."""
        found = given_back(self._load)()
        self._map, self._read_at, self._loaded = found, time.monotonic(), True

    async def get(self) -> dict[str, str]:
        age, interval = time.monotonic() - self._read_at, resilience_settings.POLICY_CHECK_INTERVAL
        if age < interval or (self._refreshing and self._loaded):
            held = self._map  # what this request goes on with (starting a thread may let it run first)
            if self._loaded and self._ahead.soon(age, interval):
                self._ahead.start(self._read)
            return held
        self._refreshing = True
        try:
            await sync_to_async(self._read)()
        finally:
            self._refreshing = False
        return self._map


models = _ModelMap()


def _invalid(param: str | None, message: str) -> Refusal:
    """A chat request the gateway refuses (400 naming `param`)."""
    return Refusal(None, message, 400, param=param)  # OpenAI names no code for these


def _checked(payload: Any) -> tuple[str, bool]:
    """(model, stream) of a chat request, or a 400 `Refusal` naming the field.
    The rest of the body is the provider's to judge."""
    if not isinstance(payload, dict):
        raise _invalid(None, "The body must be a JSON object.")
    model = payload.get("model")
    if not isinstance(model, str) or not model.strip():
        raise _invalid("model", "you must provide a model parameter")
    if not isinstance(payload.get("messages"), list) or not payload["messages"]:
        raise _invalid("messages", "'messages' must be a non-empty array")
    stream = payload.get("stream", False)
    if not isinstance(stream, bool):
        raise _invalid("stream", "'stream' must be a boolean")
    return model, stream


def _usage_only(event: Any) -> bool:
    """The stream's final usage chunk (no choices), which a caller that did not ask for it is not sent."""
    return isinstance(event.data, dict) and not event.data.get("choices") and bool(event.data.get("usage"))


def _relayed(raw: bytes, payload: dict[str, Any]) -> dict[str, Any]:
    """The request body for the client: the caller's bytes as they came (parsed
    once, never re-encoded: 20 us on a small body, 0.3 ms on a 10 KB prompt).
    The client still rewrites a JSON object's "model" for an endpoint's model
    override or a fallback model (resilience.client.attempt.spec_for), which
    it recognizes by the leading brace; a body with leading whitespace is
    sent re-encoded instead."""
    if raw[:1] == b"{":
        return {"data": raw, "headers": _JSON}
    return {"json": payload}


def _usage_asked(payload: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The stream request sent on, always asking the provider for its final
    usage (the ledger and the caller's budget need it, as the Messages door and
    the generate provider ask), and whether the caller asked for it itself."""
    if OPENAI_CHAT.wants_usage(payload):
        return payload, True
    options = payload.get("stream_options") if isinstance(payload.get("stream_options"), dict) else {}
    return {**payload, "stream_options": {**options, "include_usage": True}}, False


def _supervised(stream: SupervisedStream, model: str, spend: Spend, *,
                relay_usage: bool = True) -> EventStreamResponse:
    """The supervised stream as OpenAI chunks (see the module docstring), the
    events of one provider read in one write. The last read's events, when
    the stream ends with it, go out with `[DONE]` and the body's end, after
    the stream is settled."""
    head: dict[str, Any] = {}

    def rendered(event: Any) -> bytes | None:
        if not relay_usage and _usage_only(event):
            return None  # asked for the ledger, not by the caller
        data = event.data if isinstance(event.data, dict) else {}
        if not head and (data.get("choices") or event.raw):
            head.update(id=data.get("id") or "chatcmpl-gateway",
                        created=data.get("created") or int(time.time()))
        if event.raw and not event.attempt and not event.spliced:
            return b"data: " + event.raw + b"\n\n"  # as the provider sent it
        if not data.get("choices") and "usage" not in data:
            return None  # a ping, a block's stop: nothing for an OpenAI caller
        chunk = OPENAI_CHAT.with_text(data, event.text) if event.spliced else data
        named = stream.model or model  # the model that produced it (a chunk may not say)
        chunk = {"object": "chat.completion.chunk", "model": named, **chunk, **head}
        return f"data: {json.dumps(chunk)}\n\n".encode()  # one id for the one answer

    async def chunks() -> AsyncIterator[bytes]:
        last = b""
        try:
            async for batch in stream.batches():
                parts = (rendered(batch[0]) or b"" if len(batch) == 1
                         else b"".join(part for part in map(rendered, batch) if part))
                if stream.ending:
                    last += parts  # nothing more comes: it goes with the end
                elif parts:
                    yield parts
            end = _DONE
        except errors.UpstreamError as err:
            end = error_event(err, shape=OPENAI)
        except Exception as err:  # whatever broke the stream, the caller must hear of it
            end = error_event(AppError(f"the stream broke: {type(err).__name__}"), shape=OPENAI)
        finally:
            await stream.aclose()
            await stream_settle(spend, stream)  # billed, its usage when it sent one; unread: freed
        answer.end_follows()
        yield last + end

    # The request's end settles it if the generator did not (never started, or closed later).
    spend_left_unread(lambda: stream_settle(spend, stream))
    answer = EventStreamResponse(chunks())
    return answer


def _throttled(wait: float) -> Refusal:
    return Refusal("rate_limit_exceeded", "Rate limit reached for the gateway.", 429,
                   retry_after=wait or 1.0, type="requests")


def _method_not_allowed(request: HttpRequest, allowed: str) -> Refusal:
    return Refusal("method_not_allowed", f"Method {request.method} not allowed.", 405, allow=allowed)


@slow_expected  # completions take seconds by design: not "slow requests"
@csrf_exempt  # token requests carry no CSRF token; session requests are checked in _authenticate
async def chat_completions(request: HttpRequest) -> HttpResponse:
    try:
        return await _chat(request)
    except errors.UpstreamHTTPError as err:  # the provider's own error answer to a stream request
        return error_response(ProviderAnswered(err.response), shape=OPENAI)
    except AppError as err:
        return error_response(err, shape=OPENAI, request=request)


async def _chat(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        raise _method_not_allowed(request, "POST")
    request.user = await request_authenticate(request)
    throttle = GenerateThrottle()
    # A caller with limits has the throttle counted by its admission below (one round trip).
    if not caller_limited(request.user) and not await throttle.aallow(request):
        raise _throttled(throttle.wait())
    payload = body_json(request)
    model, stream = _checked(payload)
    name = (await models.get()).get(model)
    if name is None:
        raise Refusal("model_not_found",
                      f"The model `{model}` does not exist or you do not have access to it.", 404,
                      param="model")
    try:
        limit = payload.get("max_completion_tokens") or payload.get("max_tokens")
        spend = await caller_admit(request, model=model, prompt=payload["messages"], max_tokens=limit,
                                   throttle=throttle)
    except CallerThrottled as err:
        raise _throttled(err.retry_after or 0.0) from None
    try:
        response = await _sent(request.body, payload, name, stream, spend)
    except BaseException:
        await spend.asettle(None, billed=False)  # no answer: the reservation is freed
        raise
    if not response.streaming:  # an error answered here: no provider usage, the reservation is freed
        await spend.asettle(None, billed=False)
    return response


async def _sent(raw: bytes, payload: dict[str, Any], name: str, stream: bool, spend: Spend) -> HttpResponse:
    client = upstream_client(name)
    # In OpenAI's format with its bridge: an attempt on an Anthropic-format endpoint is translated there
    # and back by the client's attempt step; plain calls are cached and single-flighted as the policy says.
    if stream:
        sent, asked = _usage_asked(payload)
        supervised = await client.astream(CHAT_PATH, json=sent, codec=OPENAI_CHAT, wire=CHAT_WIRE,
                                          optional_usage=None if asked else INCLUDE_USAGE)
        return _supervised(supervised, payload["model"], spend, relay_usage=asked)
    response = await client.arequest("POST", CHAT_PATH, **_relayed(raw, payload), raise_for_status=False,
                                     wire=CHAT_WIRE)
    if response.status_code >= 400:
        raise ProviderAnswered(response)  # unbilled: the caller's view frees the reservation
    # Parsed once, before anything is billed: a 200 that is not JSON is the provider's failure (502,
    # unbilled), not the caller's; the same parse gives the settlement its usage.
    answer = provider_json(response)
    await answer_settle(spend, response, answer)
    return HttpResponse(response.content, status=response.status_code, content_type="application/json")


async def model_list(request: HttpRequest) -> HttpResponse:
    try:
        if request.method != "GET":
            raise _method_not_allowed(request, "GET")
        request.user = await request_authenticate(request)
    except AppError as err:
        return error_response(err, shape=OPENAI, request=request)
    served = await models.get()
    return JsonResponse({"object": "list", "data": [
        {"id": model, "object": "model", "created": 0, "owned_by": name}
        for model, name in sorted(served.items())]})
