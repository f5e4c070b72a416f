"""Which wire format an upstream's endpoints speak (Endpoint.wire_format),
and the OpenAI front door's path to an Anthropic-format upstream: a
`/v1/chat/completions` call translated to Anthropic's Messages API there
and back (aigen.generation.translate; streams through the stream supervisor
with the Anthropic codec, aigen.generation.anthropic_wire), answered in
OpenAI's shapes.

Imported by both front doors (aigen.edge.openai, aigen.edge.messages);
imports neither. An upstream's enabled endpoints share one format: one
whose endpoints disagree is `mixed`, and the front doors refuse to guess.

On failure (every body from aigen.edge.errors): the provider's Anthropic
error body becomes OpenAI's with its status (`ProviderAnswered`); a call that
got no usable answer raises its `UpstreamError`, which the OpenAI route
renders with its status and code; a stream that cannot go on ends with one
OpenAI error event.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncIterator
from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse

from aigen.edge.errors import OPENAI, ProviderAnswered, Refusal, error_event
from aigen.edge.metering import answer_settle
from aigen.generation import translate
from aigen.generation.anthropic_wire import ANTHROPIC_MESSAGES
from aigen.generation.spend import Spend
from resilience import exceptions as errors
from resilience.client import upstream_client
from resilience.client.openai_wire import OPENAI_CHAT
from resilience.client.stream import SupervisedStream
from resilience.conf import resilience_settings
from resilience.models import Endpoint

#: The header Anthropic's API versions its calls with (sent on, and echoed to callers).
VERSION_HEADER = "anthropic-version"

#: Sent to an Anthropic-format endpoint when the caller named none.
DEFAULT_VERSION = "2023-06-01"
MESSAGES_PATH = "messages"


class _WireFormats:
    """upstream name -> the wire format its enabled endpoints speak
    (`openai` when it has none, `mixed` when they disagree), re-read at most
    every `POLICY_CHECK_INTERVAL` seconds (one query, off the event loop)."""

    def __init__(self) -> None:
        self._map: dict[str, str] = {}
        self._read_at = -math.inf

    def clear(self) -> None:
        self._read_at = -math.inf

    @staticmethod
    def _load() -> dict[str, str]:
        found: dict[str, set[str]] = {}
        for name, wire in Endpoint.objects.filter(enabled=True).values_list("upstream__name", "wire_format"):
            found.setdefault(name, set()).add(wire)
        return {name: wires.pop() if len(wires) == 1 else "mixed" for name, wires in found.items()}

    async def get(self, name: str) -> str:
        if time.monotonic() - self._read_at >= resilience_settings.POLICY_CHECK_INTERVAL:
            self._read_at = time.monotonic()  # one reader at a time; the others use the last map
            self._map = await sync_to_async(self._load)()
        return self._map.get(name, "openai")


wire_formats = _WireFormats()


def _openai_stream(stream: SupervisedStream, model: str, spend: Spend) -> StreamingHttpResponse:
    """The Anthropic stream, parsed into OpenAI chunks (anthropic_wire), as OpenAI's SSE."""
    async def chunks() -> AsyncIterator[bytes]:
        head: dict[str, Any] = {}
        try:
            async for event in stream:
                chunk = OPENAI_CHAT.with_text(event.data, event.text) if event.spliced else event.data
                if not chunk or (not chunk.get("choices") and "error" not in chunk):
                    continue  # ping, block stop: nothing for an OpenAI caller
                if not head:
                    head = {"id": chunk.get("id") or "chatcmpl-gateway", "created": int(time.time())}
                yield f"data: {json.dumps({**chunk, **head, 'model': model})}\n\n".encode()
            yield b"data: [DONE]\n\n"
        except errors.UpstreamError as err:
            yield error_event(err, shape=OPENAI)
        finally:
            await stream.aclose()
            await spend.asettle(stream.usage)

    answer = StreamingHttpResponse(chunks(), content_type="text/event-stream; charset=utf-8")
    answer["Cache-Control"] = "no-cache, no-transform"
    answer["X-Accel-Buffering"] = "no"
    return answer


async def chat_via_anthropic(payload: dict[str, Any], name: str, spend: Spend) -> HttpResponse:
    """A chat-completions call to an upstream whose endpoints speak
    Anthropic's API: translated there and back. Raises an `AppError` that the
    OpenAI front door renders in OpenAI's shape (aigen.edge.errors)."""
    try:
        body = translate.anthropic_request(payload)
    except translate.TranslationError as invalid:
        raise Refusal(None, invalid.message, 400, param=invalid.param) from None
    client = upstream_client(name)
    headers = {VERSION_HEADER: DEFAULT_VERSION}
    try:
        if body.get("stream"):
            stream = await client.astream(MESSAGES_PATH, json=body, codec=ANTHROPIC_MESSAGES,
                                          headers=headers)
            return _openai_stream(stream, payload["model"], spend)
        response = await client.arequest("POST", MESSAGES_PATH, json=body, cache=False,
                                         raise_for_status=False, headers=headers)
    except errors.UpstreamHTTPError as err:
        raise ProviderAnswered(err.response, wire="anthropic") from None
    await answer_settle(spend, response.status_code, response.content)
    if response.status_code >= 400:
        raise ProviderAnswered(response, wire="anthropic")
    message = provider_json(response)
    return JsonResponse(translate.openai_response(message, model=payload["model"], created=int(time.time())))


def provider_json(response: Any) -> Any:
    """The provider's successful answer as JSON, or a 502 `provider_error`."""
    try:
        return json.loads(response.content)
    except ValueError:
        raise Refusal("provider_error", "the provider's answer is not JSON", 502) from None
