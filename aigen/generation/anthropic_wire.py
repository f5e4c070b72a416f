"""Anthropic Messages as a stream wire format (`ANTHROPIC_MESSAGES`), for the
stream supervisor (resilience.client.stream), used when an upstream's
endpoints speak Anthropic's API (Endpoint.wire_format).

Each Anthropic event is parsed into a `StreamEvent` whose `data` is the
equivalent OpenAI chat-completions chunk (aigen.generation.translate), so
both front doors render it with their own writers: `/v1/messages` through
`AnthropicStreamWriter` (one coherent message across continuations),
`/v1/chat/completions` as OpenAI chunks. `raw` keeps the provider's bytes.

How an Anthropic stream ends: `message_delta` carries the stop reason and
usage, `message_stop` ends it (`is_done`). A failure mid-stream is an
`error` event. A continuation sends the text so far as the last assistant
message (Anthropic continues a prefilled assistant turn natively). Tool use
(`tool_use` blocks, `input_json_delta`) is `opaque`: not continued.

Two things need the attempt's own state (`for_attempt()`: one parser per
attempt): OpenAI numbers tool calls from 0 in the order they start, while
Anthropic's block index counts every block (a text block before a tool takes
index 0: the tool is OpenAI's 0, not 1; LiteLLM #5231 and Bifrost #1961
sent the block index, or 0 for every call); and Anthropic's usage comes in
two halves, the input and cache tokens in `message_start`, the output in
`message_delta`, so the final chunk's usage is both merged (a bridge that
reads `message_delta` alone reports no prompt tokens).

On failure: `parse` returns None for an event that is not a JSON object
(the supervisor skips and counts it); nothing here raises.
"""
from __future__ import annotations

from typing import Any

from aigen.generation import translate
from resilience.client.stream import StreamEvent, json_object, refusal_says

_PREFILL_WORDS = ("prefill", "assistant", "final message")


def _chunk(delta: dict[str, Any], *, head: dict[str, Any] | None = None, finish: str | None = None,
           usage: dict[str, Any] | None = None) -> dict[str, Any]:
    chunk: dict[str, Any] = {**(head or {}), "object": "chat.completion.chunk",
                             "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage is not None:
        chunk["usage"] = usage
    return chunk


def _block_start(event: dict[str, Any], position: int) -> dict[str, Any]:
    block = event.get("content_block") or {}
    call = {"index": position, "id": block.get("id", ""), "type": "function",
            "function": {"name": block.get("name", ""), "arguments": ""}}
    return _chunk({"tool_calls": [call]})


def _block_delta(event: dict[str, Any], tools: dict[Any, int]) -> tuple[dict[str, Any], str, bool]:
    delta = event.get("delta") or {}
    if delta.get("type") == "text_delta":
        text = str(delta.get("text") or "")
        return _chunk({"content": text}), text, False
    if delta.get("type") == "input_json_delta":
        position = tools.get(event.get("index", 0), 0)
        call = {"index": position, "function": {"arguments": delta.get("partial_json", "")}}
        return _chunk({"tool_calls": [call]}), "", True
    return {}, "", False  # thinking and signature deltas: nothing of them reaches an OpenAI caller


class AnthropicMessages:
    """The Anthropic Messages stream format (see the module docstring); one
    instance per attempt (`for_attempt`) holds the tool numbering and the
    usage of `message_start`."""

    name = "anthropic"

    def __init__(self) -> None:
        self._tools: dict[Any, int] = {}  # Anthropic block index -> OpenAI tool-call index
        self._usage: dict[str, Any] = {}  # message_start's usage (input and cache tokens)

    @staticmethod
    def for_attempt() -> AnthropicMessages:
        return AnthropicMessages()

    @staticmethod
    def is_done(data: bytes) -> bool:
        return b'"message_stop"' in data[:64] and data.lstrip().startswith(b"{")

    def parse(self, data: bytes) -> StreamEvent | None:
        event = json_object(data)
        if event is None:
            return None
        kind = event.get("type")
        if kind == "error":
            error = event.get("error")
            code = error.get("type") if isinstance(error, dict) else None  # never its message (echoes)
            return StreamEvent(data=translate.openai_error(event, 500), raw=data, error=str(code or "error"))
        if kind == "message_start":
            message = event.get("message") or {}
            if isinstance(message.get("usage"), dict):
                self._usage = dict(message["usage"])
            head = {"id": f"chatcmpl-{message.get('id', '')}", "model": message.get("model", "")}
            return StreamEvent(data=_chunk({"role": "assistant", "content": ""}, head=head), raw=data)
        if kind == "content_block_start":
            if (event.get("content_block") or {}).get("type") != "tool_use":
                return StreamEvent(data={}, raw=data)
            position = self._tools.setdefault(event.get("index", 0), len(self._tools))
            return StreamEvent(data=_block_start(event, position), raw=data, opaque=True)
        if kind == "content_block_delta":
            chunk, text, opaque = _block_delta(event, self._tools)
            return StreamEvent(text=text, data=chunk, raw=data, opaque=opaque)
        if kind == "message_delta":
            stop = (event.get("delta") or {}).get("stop_reason") or "end_turn"
            final = event.get("usage") if isinstance(event.get("usage"), dict) else {}
            merged = {**self._usage, **{key: value for key, value in final.items() if value is not None}}
            usage = translate.openai_usage(merged)
            finish = translate.STOP_TO_OPENAI.get(stop, "stop")
            return StreamEvent(finish_reason=finish, usage=usage, raw=data,
                               data=_chunk({}, finish=finish, usage=usage))
        return StreamEvent(data={}, raw=data)  # ping, content_block_stop: nothing to render

    @staticmethod
    def answer_events(content: bytes) -> list[StreamEvent] | None:
        """The events of a provider that sent one whole message."""
        message = json_object(content)
        if message is None or message.get("type") != "message":
            return None
        completion = translate.openai_response(message, model=str(message.get("model") or ""))
        reply = completion["choices"][0]["message"]
        finish = completion["choices"][0]["finish_reason"]
        delta = {"role": "assistant", "content": reply.get("content") or ""}
        if reply.get("tool_calls"):
            delta["tool_calls"] = [{**call, "index": i} for i, call in enumerate(reply["tool_calls"])]
        chunk = _chunk(delta, finish=finish, usage=completion["usage"])
        return [StreamEvent(text=delta["content"], finish_reason=finish, usage=completion["usage"],
                            data=chunk, raw=content, opaque=bool(reply.get("tool_calls")))]

    @staticmethod
    def wants_usage(body: Any) -> bool:
        return False  # message_delta carries it with the stop reason

    @staticmethod
    def continuation(body: Any, partial: str) -> Any:
        messages = list(body.get("messages") or ())
        return {**body, "messages": [*messages, {"role": "assistant", "content": partial}]}

    @staticmethod
    def refuses_prefill(status: int, content: bytes) -> bool:
        return refusal_says(status, content, _PREFILL_WORDS)


ANTHROPIC_MESSAGES = AnthropicMessages()
