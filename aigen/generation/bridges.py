"""The front doors' wire bridges (resilience.client.wires.WireBridge): how a
call in OpenAI's chat-completions format (`CHAT_WIRE`) or Anthropic's
Messages format (`MESSAGES_WIRE`) is sent to an endpoint that speaks the
other, and its answer brought back, attempt by attempt.

The front doors hand their call to the upstream's client in their own
format with their bridge; the client's attempt step asks the bridge only
when the endpoint an attempt goes to declares the other format
(`Endpoint.wire_format`), so one pool may mix formats and failover may
cross them. The translation itself is aigen.generation.translate (pure
functions); streams are parsed by the codec of the endpoint that answered
(`OPENAI_CHAT`, `ANTHROPIC_MESSAGES`), both yielding OpenAI-shaped chunks.

Headers: a call sent to an Anthropic-format endpoint carries
`anthropic-version` (the caller's on a Messages call, else
`DEFAULT_VERSION`); a Messages call sent to an OpenAI-format endpoint
drops Anthropic's headers. The Messages bridge's `vary` puts
`anthropic-version` and `anthropic-beta` into the cache key.

An OpenAI error's `code` stays on the Anthropic error decoded from it (an
extra field the SDKs ignore): the client's steps read it to tell a prompt
too long for the model, which goes to the policy's fallback model.

On failure: `encode` raises `TranslationError` (a ValueError) naming the
field that cannot be translated; `decode` never raises: an answer that is
not JSON becomes the other format's error body for its status, a success
that is not the expected shape an empty answer.
"""
from __future__ import annotations

import json
import time
from typing import Any

from aigen.generation import translate
from aigen.generation.anthropic_wire import ANTHROPIC_MESSAGES
from resilience.client.openai_wire import OPENAI_CHAT

#: The header Anthropic's API versions its calls with (sent on, and echoed to callers).
VERSION_HEADER = "anthropic-version"
#: Sent to an Anthropic-format endpoint when the caller named none.
DEFAULT_VERSION = "2023-06-01"
#: Each wire format's path under an endpoint's base URL.
PATHS = {"openai": "chat/completions", "anthropic": "messages"}
CHAT_PATH = PATHS["openai"]
MESSAGES_PATH = PATHS["anthropic"]
CODECS = {"openai": OPENAI_CHAT, "anthropic": ANTHROPIC_MESSAGES}


def _json(content: bytes) -> Any:
    try:
        return json.loads(content)
    except ValueError:
        return None


def _model(request: Any) -> str:
    return str(request.get("model") or "") if isinstance(request, dict) else ""


class _Bridge:
    format = ""
    vary: tuple[str, ...] = ()

    @staticmethod
    def codec(target: str) -> Any:
        return CODECS.get(target, OPENAI_CHAT)


class MessagesWire(_Bridge):
    """A Messages call (Anthropic's format), sent to an OpenAI-format endpoint."""

    format = "anthropic"
    vary = ("anthropic-beta", VERSION_HEADER)

    @staticmethod
    def encode(body: Any, headers: dict[str, str], *, target: str) -> tuple[str, Any, dict[str, str]]:
        if not isinstance(body, dict):
            raise translate.TranslationError("body", "the body must be a JSON object")
        kept = {name: value for name, value in headers.items() if not name.lower().startswith("anthropic-")}
        return PATHS[target], translate.openai_request(body), kept

    @staticmethod
    def decode(content: bytes, *, status: int, target: str, request: Any) -> bytes:
        found = _json(content)
        if status < 400 and not isinstance(found, dict):
            return content  # not an answer: the door refuses it as the provider's failure (502)
        if status < 400:
            answer = translate.anthropic_response(found, model=_model(request))
        else:
            error = found.get("error") if isinstance(found, dict) else None
            error = error if isinstance(error, dict) else {}
            message = str(error.get("message") or f"the provider answered {status}")
            answer = translate.anthropic_error(status, message)
            if error.get("code"):  # the client's steps read it: a context-length 400 asks the fallback model
                answer["error"]["code"] = error["code"]
        return json.dumps(answer, separators=(",", ":")).encode()


class ChatWire(_Bridge):
    """A chat-completions call (OpenAI's format), sent to an Anthropic-format endpoint."""

    format = "openai"

    @staticmethod
    def encode(body: Any, headers: dict[str, str], *, target: str) -> tuple[str, Any, dict[str, str]]:
        if not isinstance(body, dict):
            raise translate.TranslationError("body", "the body must be a JSON object")
        return PATHS[target], translate.anthropic_request(body), {**headers, VERSION_HEADER: DEFAULT_VERSION}

    @staticmethod
    def decode(content: bytes, *, status: int, target: str, request: Any) -> bytes:
        found = _json(content)
        if status < 400 and not isinstance(found, dict):
            return content  # not an answer: the door refuses it as the provider's failure (502)
        if status < 400:
            answer = translate.openai_response(found, model=_model(request), created=int(time.time()))
        else:
            answer = translate.openai_error(found, status)
        return json.dumps(answer, separators=(",", ":")).encode()


MESSAGES_WIRE = MessagesWire()
CHAT_WIRE = ChatWire()
