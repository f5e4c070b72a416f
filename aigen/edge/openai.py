"""The OpenAI-compatible front door: `POST /v1/chat/completions` (plain and
streamed) and `GET /v1/models`, so any OpenAI SDK uses the gateway by
changing its base URL.

Authentication is the project's API tokens (`Authorization: Bearer <key>`,
the same cached lookup as POST /api/ai/generate: aigen.edge.generate), never a
provider key: the provider's credential is the upstream's or its endpoint's
environment variable. The request's `model` picks the upstream that lists
it in `served_models`; the body goes through that upstream's client
(`arequest`: policy, endpoint choice and failover, breakers, call log,
metrics), with an endpoint's model override applied to the body it is sent
to. Async views without DRF: a generation waits on the provider without
holding a thread.

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
the usage chunk when asked for, and `data: [DONE]` (also when the provider
left it out). When the answer cannot go on, the stream ends with one error
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
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from aigen.edge import wire
from aigen.edge.auth import request_authenticate
from aigen.edge.errors import OPENAI, Refusal, error_response, openai_body
from aigen.edge.parsing import body_json
from aigen.edge.throttling import GenerateThrottle
from resilience import exceptions as errors
from resilience.client import upstream_client
from resilience.client.openai_wire import OPENAI_CHAT
from resilience.client.stream import SupervisedStream
from resilience.conf import resilience_settings
from resilience.exceptions import AppError
from resilience.telemetry.slow import slow_expected

CHAT_PATH = "chat/completions"
_JSON = {"Content-Type": "application/json"}
_DONE = b"data: [DONE]\n\n"


def _stream_error(message: str, code: str = "stream_interrupted") -> bytes:
    return f"data: {json.dumps(openai_body(message, code=code))}\n\n".encode()


class _ModelMap:
    """model name -> upstream name, from the enabled upstreams' `served_models`,
    re-read at most every `POLICY_CHECK_INTERVAL` seconds (one query). While
    one request re-reads it, the others use the map read a moment ago: a
    burst arriving as it expires makes one query, not one each (they would
    queue on the one thread that runs the ORM)."""

    def __init__(self) -> None:
        self._map: dict[str, str] = {}
        self._read_at = -math.inf
        self._loaded = False
        self._refreshing = False

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

    async def get(self) -> dict[str, str]:
        if time.monotonic() - self._read_at < resilience_settings.POLICY_CHECK_INTERVAL or (
                self._refreshing and self._loaded):
            return self._map
        self._refreshing = True
        try:
            self._map = await sync_to_async(self._load)()
        finally:
            self._refreshing = False
        self._read_at = time.monotonic()
        self._loaded = True
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


def _provider_error(response: Any) -> HttpResponse:
    """The provider's error answer: its OpenAI-shaped body as it is, else wrapped."""
    status = response.status_code
    try:
        body = json.loads(response.content)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        answer = HttpResponse(response.content, status=status, content_type="application/json")
        retry_after = response.headers.get("Retry-After")
        if retry_after:
            answer["Retry-After"] = retry_after
        answer._has_been_logged = True  # type: ignore[attr-defined]
        return answer
    return error_response(Refusal("provider_error", f"the provider answered {status}", status), shape=OPENAI)


def _supervised(stream: SupervisedStream) -> StreamingHttpResponse:
    """The supervised stream as OpenAI chunks (see the module docstring)."""
    async def chunks() -> AsyncIterator[bytes]:
        head: dict[str, Any] = {}
        try:
            async for event in stream:
                if not event.attempt and not event.spliced:
                    if not head and isinstance(event.data, dict):
                        head = {k: event.data[k] for k in ("id", "created") if k in event.data}
                    yield b"data: " + event.raw + b"\n\n"  # as the provider sent it
                    continue
                chunk = OPENAI_CHAT.with_text(event.data, event.text) if event.spliced else event.data
                yield f"data: {json.dumps({**chunk, **head})}\n\n".encode()  # one id for the one answer
            yield _DONE
        except errors.UpstreamError as err:
            yield _stream_error(err.message, "stream_interrupted" if err.code != "upstream_timeout"
                                else err.code)
        except Exception as err:  # whatever broke the stream, the caller must hear of it
            yield _stream_error(f"the stream broke: {type(err).__name__}")
        finally:
            await stream.aclose()

    answer = StreamingHttpResponse(chunks(), content_type="text/event-stream; charset=utf-8")
    answer["Cache-Control"] = "no-cache, no-transform"
    answer["X-Accel-Buffering"] = "no"
    return answer


def _method_not_allowed(request: HttpRequest, allowed: str) -> Refusal:
    return Refusal("method_not_allowed", f"Method {request.method} not allowed.", 405, allow=allowed)


@slow_expected  # completions take seconds by design: not "slow requests"
@csrf_exempt  # token requests carry no CSRF token; session requests are checked in _authenticate
async def chat_completions(request: HttpRequest) -> HttpResponse:
    try:
        return await _chat(request)
    except errors.UpstreamHTTPError as err:  # the provider's own error answer to a stream request
        return _provider_error(err.response)
    except AppError as err:
        return error_response(err, shape=OPENAI, request=request)


async def _chat(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        raise _method_not_allowed(request, "POST")
    request.user = await request_authenticate(request)
    throttle = GenerateThrottle()
    # A cache call: off the loop, in the shared pool. Thread-sensitive (the default) would
    # start a thread per request (Django's per-request ThreadSensitiveContext): 0.6 ms of CPU.
    if not await sync_to_async(throttle.allow_request, thread_sensitive=False)(request, None):
        raise Refusal("rate_limit_exceeded", "Rate limit reached for the gateway.", 429,
                      retry_after=throttle.wait() or 1.0, type="requests")
    payload = body_json(request)
    model, stream = _checked(payload)
    name = (await models.get()).get(model)
    if name is None:
        raise Refusal("model_not_found",
                      f"The model `{model}` does not exist or you do not have access to it.", 404,
                      param="model")
    if await wire.wire_formats.get(name) == "anthropic":  # translated there and back
        return await wire.chat_via_anthropic(payload, name)
    client = upstream_client(name)
    if stream:
        return _supervised(await client.astream(CHAT_PATH, json=payload, codec=OPENAI_CHAT))
    response = await client.arequest("POST", CHAT_PATH, **_relayed(request.body, payload), cache=False,
                                     raise_for_status=False)
    if response.status_code >= 400:
        return _provider_error(response)
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
