"""A loopback Anthropic-compatible provider: `POST /v1/messages`, plain and
streamed in Anthropic's event sequence, deterministic.

The answer is CONTENT_PREFIX + the last user text (after a tool's result:
CONTENT_PREFIX + that result). A request offering tools gets a `tool_use`
of its first tool with `{"text": <last user text>}` when its `tool_choice`
is `any`; streamed, the arguments arrive as several `input_json_delta`s.
An assistant turn last is a prefill: the answer is the rest after it.
`fail_next` queues replies (a 4xx/5xx without a body gets Anthropic's error
body; a 200 delays the next plain answer by its `delay`); `cut_next_stream`
cuts the next stream after that many text deltas.
Built on tests.support.fake_upstream (real sockets, real HTTP).
"""
from __future__ import annotations

import json
from collections import deque
from typing import Any

from tests.support.fake_upstream import CUT, HTTPFake, Recorded, Reply

CONTENT_PREFIX = "FAKE-CLAUDE: "
MESSAGES_PATH = "/v1/messages"
_KINDS = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 429: "rate_limit_error", 529: "overloaded_error"}


def error_body(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": _KINDS.get(status, "api_error"), "message": message}}


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) if part.get("type") == "text" else _text(part.get("content"))
                       for part in content if isinstance(part, dict))
    return content if isinstance(content, str) else ""


def _pieces(text: str, count: int = 4) -> list[str]:
    step = max(1, -(-len(text) // count))
    return [text[i:i + step] for i in range(0, len(text), step)] or [""]


def _frame(event: dict[str, Any]) -> bytes:
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()


class FakeAnthropic(HTTPFake):
    """A fake Anthropic API; its `url` is the endpoint's base URL (…/v1)."""

    def __init__(self) -> None:
        super().__init__()
        self._failures: deque[Reply] = deque()
        self._cut_after: int | None = None
        self._sequence = 0

    @property
    def url(self) -> str:
        return self.root_url + "/v1"

    def fail_next(self, *replies: Reply) -> None:
        with self._lock:
            self._failures.extend(replies)

    def cut_next_stream(self, after: int) -> None:
        with self._lock:
            self._cut_after = after

    def message_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.path == MESSAGES_PATH and r.method == "POST"]

    def respond(self, request: Recorded) -> Reply:
        if request.path != MESSAGES_PATH or request.method != "POST":
            return Reply(404, body=error_body(404, "not found"))
        with self._lock:
            queued = self._failures.popleft() if self._failures else None
            self._sequence += 1
            sequence = self._sequence
            cut, self._cut_after = self._cut_after, None
        if queued is not None and queued.status >= 400:
            body = queued.body or error_body(queued.status, f"Fake failure {queued.status}")
            return Reply(queued.status, body=body, retry_after=queued.retry_after)
        delay = queued.delay if queued is not None else 0.0  # a queued 200: the answer, late
        payload = request.json()
        messages = payload["messages"]
        last = messages[-1]
        prefill = _text(last.get("content")) if last.get("role") == "assistant" else None
        user = next(m for m in reversed(messages) if m.get("role") == "user")
        blocks = [b for b in user.get("content") or () if isinstance(b, dict)] if isinstance(
            user.get("content"), list) else []
        results = [b for b in blocks if b.get("type") == "tool_result"]
        text = CONTENT_PREFIX + (_text(results[-1].get("content")) if results else _text(user.get("content")))
        if prefill is not None:
            text = text[len(prefill):] if text.startswith(prefill) else text
        tool = None
        if payload.get("tools") and (payload.get("tool_choice") or {}).get("type") == "any" and not results:
            tool = {"type": "tool_use", "id": f"toolu_fake{sequence}", "name": payload["tools"][0]["name"],
                    "input": {"text": _text(user.get("content"))}}
        usage = {"input_tokens": 10, "output_tokens": len(text) // 4 + 1, "cache_read_input_tokens": 3}
        message = {"id": f"msg_fake{sequence}", "type": "message", "role": "assistant",
                   "model": payload["model"],
                   "content": [tool] if tool else [{"type": "text", "text": text}],
                   "stop_reason": "tool_use" if tool else "end_turn", "stop_sequence": None, "usage": usage}
        if not payload.get("stream"):
            return Reply(200, body=message, delay=delay)
        return self._stream(message, cut)

    @staticmethod
    def _stream(message: dict[str, Any], cut: int | None) -> Reply:
        start = {**message, "content": [], "stop_reason": None,
                 "usage": {**message["usage"], "output_tokens": 1}}
        frames: list[bytes | float] = [_frame({"type": "message_start", "message": start}),
                                       _frame({"type": "ping"})]
        block = message["content"][0]
        if block["type"] == "tool_use":
            frames.append(_frame({"type": "content_block_start", "index": 0,
                                  "content_block": {**block, "input": {}}}))
            for piece in _pieces(json.dumps(block["input"])):
                frames.append(_frame({"type": "content_block_delta", "index": 0,
                                      "delta": {"type": "input_json_delta", "partial_json": piece}}))
        else:
            frames.append(_frame({"type": "content_block_start", "index": 0,
                                  "content_block": {"type": "text", "text": ""}}))
            for number, piece in enumerate(_pieces(block["text"]), start=1):
                frames.append(_frame({"type": "content_block_delta", "index": 0,
                                      "delta": {"type": "text_delta", "text": piece}}))
                if number == cut:
                    frames.append(CUT)
                    break
        if CUT not in frames:
            frames += [_frame({"type": "content_block_stop", "index": 0}),
                       _frame({"type": "message_delta", "delta": {"stop_reason": message["stop_reason"],
                                                                  "stop_sequence": None},
                               "usage": {"output_tokens": message["usage"]["output_tokens"]}}),
                       _frame({"type": "message_stop"})]
        return Reply(200, headers={"Content-Type": "text/event-stream; charset=utf-8"}, chunks=tuple(frames))
