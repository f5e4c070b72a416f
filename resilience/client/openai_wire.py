"""OpenAI chat completions as a stream wire format (`OPENAI_CHAT`), for the
stream supervisor (resilience.client.stream).

How an OpenAI stream ends: a chunk whose choice has a `finish_reason`, then,
when the request set `stream_options.include_usage`, one chunk with
`"choices": []` and the `usage`, then `data: [DONE]`. A provider's failure
mid-stream is an event whose data is `{"error": {...}}` (the openai SDKs
raise it as an APIError).

A continuation asks for the rest of an answer with the text so far as the
last message, `{"role": "assistant", "content": partial, "prefix": true}`:
the assistant-prefix form of the OpenAI-compatible providers that continue
a message (DeepSeek, Mistral; vLLM and others continue a final assistant
message). A provider that does not accept it answers 400 naming the prefix,
the prefill or the assistant message (OpenAI itself refuses the unknown
`prefix` property), which `refuses_prefill` recognises.

Only text is continued: an event with a tool call or a second choice
(`n` > 1) is marked `opaque`, and a stream that broke after one reached the
caller ends with an error instead.

On failure: `parse` returns None for an event that is not a JSON object
(the supervisor skips and counts it); nothing here raises.
"""
from __future__ import annotations

import json
from typing import Any

from resilience.client.stream import StreamEvent, json_object, refusal_says

#: Words of a 400's error that say a prefill (assistant prefix) is refused.
_PREFILL_WORDS = ("prefix", "prefill", "assistant")
#: Words of a 400's error that say `stream_options.include_usage` is refused.
_USAGE_WORDS = ("stream_options", "include_usage")


class OpenAIChat:
    """The OpenAI chat-completions stream format (see the module docstring)."""

    name = "openai"

    def for_attempt(self) -> OpenAIChat:
        return self  # stateless: every chunk stands alone

    @staticmethod
    def is_done(data: bytes) -> bool:
        return data.strip() == b"[DONE]"

    @staticmethod
    def parse(data: bytes) -> StreamEvent | None:
        chunk = json_object(data)
        if chunk is None:
            return None
        error = chunk.get("error")
        if error:
            # Its code or type only: a provider's message may echo what it was sent (a key, a prompt),
            # and this one goes to call logs and to the caller.
            kind = (error.get("code") or error.get("type")) if isinstance(error, dict) else None
            return StreamEvent(data=chunk, raw=data, error=str(kind or "error")[:100])
        text = ""
        finish = None
        opaque = False
        choices = chunk.get("choices") or []
        if not isinstance(choices, list):
            return None
        for choice in choices:
            if not isinstance(choice, dict):
                return None
            delta = choice.get("delta")
            if choice.get("index", 0):  # n > 1: a continuation rebuilds one answer only
                opaque = True
            if isinstance(delta, dict):
                content = delta.get("content")
                if isinstance(content, str):
                    text += content
                if delta.get("tool_calls") or delta.get("function_call"):
                    opaque = True
            if choice.get("finish_reason"):
                finish = str(choice["finish_reason"])
        usage = chunk.get("usage")
        return StreamEvent(text=text, finish_reason=finish, usage=usage if isinstance(usage, dict) else None,
                           data=chunk, raw=data, opaque=opaque)

    @staticmethod
    def answer_events(content: bytes) -> list[StreamEvent] | None:
        """The events of a provider that ignored `"stream": true` and sent one
        JSON completion (None when it is not one): one chunk with the text and
        the finish reason, and the usage as its own chunk."""
        completion = json_object(content)
        if completion is None:
            return None
        try:
            choices = completion["choices"]
            message = choices[0].get("message") or {}
        except (KeyError, TypeError, IndexError, AttributeError):
            return None
        head = {"id": completion.get("id", ""), "object": "chat.completion.chunk",
                "created": completion.get("created", 0), "model": completion.get("model", "")}
        text = message.get("content") if isinstance(message.get("content"), str) else ""
        finish = choices[0].get("finish_reason") or "stop"
        chunk = {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": text},
                                      "finish_reason": finish}]}
        events = [StreamEvent(text=text, finish_reason=finish, data=chunk, raw=json.dumps(chunk).encode())]
        usage = completion.get("usage")
        if isinstance(usage, dict):
            tail = {**head, "choices": [], "usage": usage}
            events.append(StreamEvent(usage=usage, data=tail, raw=json.dumps(tail).encode()))
        return events

    @staticmethod
    def wants_usage(body: Any) -> bool:
        options = body.get("stream_options") if isinstance(body, dict) else None
        return isinstance(options, dict) and bool(options.get("include_usage"))

    @staticmethod
    def continuation(body: Any, partial: str) -> Any:
        messages = list(body.get("messages") or ())
        return {**body, "messages": [*messages, {"role": "assistant", "content": partial, "prefix": True}]}

    @staticmethod
    def refuses_prefill(status: int, content: bytes) -> bool:
        return refusal_says(status, content, _PREFILL_WORDS)

    @staticmethod
    def with_text(data: Any, text: str) -> Any:
        """A chunk like `data` whose one choice's text is `text` (a splice's rest)."""
        choices = [dict(choice) for choice in (data.get("choices") or ())] if isinstance(data, dict) else []
        if choices:
            choices[0]["delta"] = {**(choices[0].get("delta") or {}), "content": text}
        return {**data, "choices": choices} if isinstance(data, dict) else data


OPENAI_CHAT = OpenAIChat()


class IncludeUsage:
    """`stream_options.include_usage` as an optional request (a `UsageOption`
    of resilience.client.stream): a strict OpenAI-compatible provider answers
    400 naming `stream_options` (or `include_usage`) to a field it does not know."""

    @staticmethod
    def refused(status: int, content: bytes) -> bool:
        return status == 400 and refusal_says(status, content, _USAGE_WORDS)

    @staticmethod
    def asked(body: Any) -> bool:
        return isinstance(body, dict) and "stream_options" in body

    @staticmethod
    def dropped(body: Any) -> Any:
        """`body` without `include_usage` (without `stream_options` when nothing else is left in it)."""
        options = body.get("stream_options")
        rest = {k: v for k, v in options.items() if k != "include_usage"} if isinstance(options, dict) else {}
        lean = {k: v for k, v in body.items() if k != "stream_options"}
        return {**lean, "stream_options": rest} if rest else lean


INCLUDE_USAGE = IncludeUsage()
