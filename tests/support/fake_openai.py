"""A fake OpenAI-compatible server on loopback for the real openai SDK.

This module owns `FakeOpenAI`: `POST /v1/chat/completions` (plain and
server-sent-event streaming) and `GET /v1/models`, answering deterministically
so tests can assert their prompt reached the model: the assistant's content is
"FAKE-LLM: " followed by the last user message. It runs on the machinery of
`tests.support.fake_upstream` and misbehaves through the same `Reply` type.

Failure behaviour: a request without `model` or `messages`, or with a body that
is not JSON, gets a 400 with OpenAI's error shape; `fail_next()` queues replies
(429, 500, slow, reset, malformed, `MALFORMED_JSON`) that chat requests consume
one each before normal answers resume. `misbehave(model, Behaviour(...))`
makes every answer for one model name (or "*" for all) misbehave in a
stream's own ways: cut after N events, stall, a slow first token, a
malformed event, no `[DONE]`, an error event, a refused prefill, a refused
`stream_options`, a
context-length or content-policy 400, or no answer at all.

Prefills: a request whose last message is the assistant's (`"prefix": true`,
the continuation form) is answered with the rest of the answer after that
text, as the continuing providers do, unless the behaviour refuses prefills.
"""
from __future__ import annotations

import json
import re
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Any

from tests.support.fake_upstream import CUT, HTTPFake, Recorded, Reply

MODEL_ID = "fake-model"
CONTENT_PREFIX = "FAKE-LLM: "
CHAT_PATH = "/v1/chat/completions"
MODELS_PATH = "/v1/models"

# A 200 that claims JSON but is cut off mid-object, as a broken proxy might send.
MALFORMED_JSON = Reply(
    200, body=b'{"id": "chatcmpl-broken", "choices": [', headers={"Content-Type": "application/json"},
)

# The error `type`/`code` OpenAI sends with each status, so the SDK's error
# objects look like the ones production code will meet.
_ERROR_KINDS = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "not_found"),
    429: ("requests", "rate_limit_exceeded"),
}


@dataclass(frozen=True)
class Behaviour:
    """How the fake answers one model's chat requests.

    pieces: content events in a streamed answer (the text split evenly).
    content_prefix: what the answer starts with (CONTENT_PREFIX; another
        value makes a restart that does not reproduce another provider's text).
    first_token_delay: seconds after the headers before the first event.
    cut_after: content events sent, then the connection is cut.
    stall_after, stall: after that many content events, `stall` seconds of silence.
    malformed_at: a malformed (not JSON) event goes out before content event n (1-based).
    error_after: after that many content events, an error event, then the end.
    omit_done: the stream ends after its final chunk (and usage) without `[DONE]`.
    refuse_prefill: a continuation request gets a 400 naming the prefix.
    refuse_stream_options: a request carrying `stream_options` gets a 400 naming
        it, as a strict OpenAI-compatible provider answers a field it does not know.
    error_code: every request gets a 400 with this code
        (`context_length_exceeded`, `content_policy_violation`).
    never_answer: the request is read and nothing is sent back.
    """

    pieces: int = 4
    content_prefix: str = CONTENT_PREFIX
    first_token_delay: float = 0.0
    cut_after: int | None = None
    stall_after: int | None = None
    stall: float = 0.0
    malformed_at: int | None = None
    error_after: int | None = None
    omit_done: bool = False
    refuse_prefill: bool = False
    refuse_stream_options: bool = False
    error_code: str | None = None
    never_answer: bool = False


NORMAL = Behaviour()
#: Seconds a `never_answer` request is held (the fake's stop abandons it).
NEVER = 3600.0


def tokens(text: str) -> int:
    """The fake's token count for `text`: deterministic, roughly OpenAI's 4 chars a token."""
    return len(text) // 4 + 1


def error_body(status: int, message: str, *, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error JSON for `status`."""
    default = ("server_error" if status >= 500 else "invalid_request_error", None)
    kind, code = _ERROR_KINDS.get(status, default)
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _text(content: Any) -> str:
    # Message content is a string or a list of parts ({"type": "text", "text": ...}).
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content if isinstance(content, str) else ""


def _pieces(text: str, count: int = 4) -> list[str]:
    step = max(1, -(-len(text) // count))
    return [text[i:i + step] for i in range(0, len(text), step)] or [""]


#: A user text `TOOL:<name> <json>` asks the fake to call that tool with those arguments.
TOOL_DIRECTIVE = re.compile(r"TOOL:(\w+) (\{.*\})", re.DOTALL)


def _tool_call(payload: dict[str, Any], sequence: int) -> dict[str, Any] | None:
    """The fake's tool use, for a request offering tools whose last message
    is not a tool's result: the tool and arguments a `TOOL:` directive in the
    last user text names, else with `tool_choice` "required" its first tool
    with `{"text": <that text>}`; otherwise, and once the result came (the
    answer is then the result), it answers in text."""
    tools = payload.get("tools") or []
    if not tools or payload["messages"][-1].get("role") == "tool" or payload.get("tool_choice") == "none":
        return None
    last_user = next((m for m in reversed(payload["messages"]) if m.get("role") == "user"), {})
    text = _text(last_user.get("content"))
    directive = TOOL_DIRECTIVE.search(text)
    names = [(tool.get("function") or {}).get("name", "") for tool in tools]
    if directive and directive.group(1) in names:
        name, arguments = directive.group(1), directive.group(2)
    elif directive or payload.get("tool_choice") != "required":
        return None  # no tool asked for, or the named one is not offered: answer in text
    else:
        name, arguments = names[0], json.dumps({"text": text})
    return {"id": f"call_fake{sequence}", "type": "function",
            "function": {"name": name, "arguments": arguments}}


class FakeOpenAI(HTTPFake):
    """A fake OpenAI API; point the SDK at `url` (http://127.0.0.1:PORT/v1).

        with FakeOpenAI() as fake:
            client = openai.OpenAI(api_key="test", base_url=fake.url, max_retries=0)
            fake.fail_next(Reply(429, retry_after="1"))
            ...  # first chat call raises RateLimitError, the next one answers

    A queued 200 Reply without a body stands for the normal answer sent with
    that Reply's delay, body_delay, headers, close, reset or malformed; any
    other queued Reply is sent as it is, a 4xx or 5xx without a body getting an
    OpenAI-style error body.
    """

    def __init__(self) -> None:
        super().__init__()
        self._failures: deque[Reply] = deque()
        self._sequence = 0  # numbers completion and request ids
        self._behaviours: dict[str, Behaviour] = {}
        self._behaviour_left: dict[str, int] = {}  # answers left before a model behaves again
        self._served: list[dict[str, Any]] = []  # the usage of every answer sent

    @property
    def url(self) -> str:
        """The SDK's base_url: http://127.0.0.1:PORT/v1."""
        return self.root_url + "/v1"

    def fail_next(self, *replies: Reply) -> None:
        """Queue `replies` for the next chat requests, one each, after any already queued."""
        with self._lock:
            self._failures.extend(replies)

    def misbehave(self, model: str, behaviour: Behaviour, *, times: int | None = None) -> None:
        """Answer requests for `model` ("*": any model) as `behaviour` says:
        always, or for the next `times` requests."""
        with self._lock:
            self._behaviours[model] = behaviour
            if times is not None:
                self._behaviour_left[model] = times

    @property
    def chat_calls(self) -> int:
        """Chat completion requests received, failed ones included."""
        return self.count(CHAT_PATH, "POST")

    def chat_requests(self) -> list[dict[str, Any]]:
        """The JSON bodies of the chat requests received, oldest first (ValueError if one is not JSON)."""
        return [r.json() for r in self.requests if r.path == CHAT_PATH and r.method == "POST"]

    def served_usage(self) -> list[dict[str, Any]]:
        """The `usage` of every chat answer sent (streamed or not), oldest first."""
        with self._lock:
            return list(self._served)

    @property
    def served_tokens(self) -> int:
        """Total tokens of every chat answer sent: what a provider bills."""
        return sum(usage["total_tokens"] for usage in self.served_usage())

    def reset(self) -> None:
        """Forget queued failures as well as records."""
        with self._lock:
            self._served.clear()
            self._failures.clear()
            self._behaviours.clear()
            self._behaviour_left.clear()
        super().reset()

    def respond(self, request: Recorded) -> Reply:
        if request.path == MODELS_PATH and request.method == "GET":
            return Reply(200, body={"object": "list", "data": [
                {"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "fake-openai"},
            ]})
        if request.path != CHAT_PATH or request.method != "POST":
            return Reply(404, body=error_body(404, f"Unknown request URL: {request.method} {request.path}"))
        with self._lock:
            queued = self._failures.popleft() if self._failures else None
        if queued is not None and (queued.status != 200 or queued.body):
            if not queued.body and queued.status >= 400:
                return replace(queued, body=error_body(queued.status, f"Fake failure {queued.status}"))
            return queued
        answer = self._chat(request)
        if queued is None:
            return answer
        return replace(
            answer, headers={**answer.headers, **queued.headers}, delay=queued.delay,
            body_delay=queued.body_delay, retry_after=queued.retry_after, reset=queued.reset,
            malformed=queued.malformed, close=queued.close,
        )

    def _chat(self, request: Recorded) -> Reply:
        try:
            payload = request.json()
        except ValueError:
            return Reply(400, body=error_body(400, "We could not parse the JSON body of your request."))
        if not isinstance(payload, dict):
            return Reply(400, body=error_body(400, "The request body must be a JSON object."))
        for name in ("model", "messages"):
            if not payload.get(name):
                return Reply(400, body=error_body(400, f"Missing required parameter: '{name}'.", param=name))
        messages = payload["messages"]
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            return Reply(400, body=error_body(400, "'messages' must be a list of objects.", param="messages"))

        with self._lock:
            model = payload["model"] if payload["model"] in self._behaviours else "*"
            behaviour = self._behaviours.get(model, NORMAL)
            left = self._behaviour_left.get(model)
            if left is not None:
                if left <= 1:
                    del self._behaviours[model], self._behaviour_left[model]
                else:
                    self._behaviour_left[model] = left - 1
        if behaviour.never_answer:
            return Reply(200, delay=NEVER)
        if behaviour.error_code:
            message = {"context_length_exceeded": "This model's maximum context length is 8 tokens.",
                       }.get(behaviour.error_code, f"Your request was rejected ({behaviour.error_code}).")
            body = error_body(400, message, param="messages")
            body["error"]["code"] = behaviour.error_code
            return Reply(400, body=body)
        if behaviour.refuse_stream_options and "stream_options" in payload:
            return Reply(400, body=error_body(
                400, "Unrecognized request argument supplied: stream_options", param="stream_options"))
        last = messages[-1]
        prefill = _text(last.get("content")) if last.get("role") == "assistant" else None
        if prefill is not None and behaviour.refuse_prefill:
            return Reply(400, body=error_body(
                400, "This model does not support assistant message prefill (prefix).", param="messages"))
        last_user = next((m for m in reversed(messages) if m.get("role") == "user"), {})
        content = behaviour.content_prefix + _text(last_user.get("content"))
        if last.get("role") == "tool":  # after a tool call: the tool's result
            content = behaviour.content_prefix + _text(last.get("content"))
        if prefill is not None:  # a continuation: the rest after the prefill
            content = content[len(prefill):] if content.startswith(prefill) else content
        prompt_tokens = sum(tokens(_text(m.get("content"))) for m in messages)
        completion_tokens = tokens(content)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens}
        with self._lock:
            self._sequence += 1
            sequence = self._sequence
            self._served.append(usage)
        head = {"id": f"chatcmpl-fake{sequence}", "created": int(time.time()), "model": payload["model"]}
        headers = {"x-request-id": f"req_fake{sequence}"}

        call = _tool_call(payload, sequence)
        if call is not None:
            return self._tool_answer(payload, head, headers, usage, call, behaviour.pieces)
        if not payload.get("stream"):
            message = {"role": "assistant", "content": content, "refusal": None}
            return Reply(200, headers=headers, body={
                **head, "object": "chat.completion",
                "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}],
                "usage": usage,
            })

        # OpenAI's stream: a role chunk, content chunks, a finish chunk, and with
        # include_usage a last chunk with usage and no choices (the others
        # carrying "usage": null).
        with_usage = bool((payload.get("stream_options") or {}).get("include_usage"))

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            body = {**head, "object": "chat.completion.chunk", "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
            return {**body, "usage": None} if with_usage else body

        def frame(event: dict[str, Any]) -> bytes:
            return f"data: {json.dumps(event)}\n\n".encode()

        frames: list[bytes | float] = [frame(chunk({"role": "assistant", "content": ""}))]
        if behaviour.first_token_delay:
            frames.insert(0, behaviour.first_token_delay)
        for number, piece in enumerate(_pieces(content, behaviour.pieces), start=1):
            if number == behaviour.malformed_at:
                frames.append(b"data: {this is not json\n\n")
            frames.append(frame(chunk({"content": piece})))
            if number == behaviour.cut_after:
                return self._stream(headers, [*frames, CUT])
            if number == behaviour.error_after:
                error = error_body(500, "The server had an error while processing your request.")
                return self._stream(headers, [*frames, frame(error)])
            if number == behaviour.stall_after:
                frames.append(behaviour.stall)
        frames.append(frame(chunk({}, "stop")))
        if with_usage:
            frames.append(frame({**head, "object": "chat.completion.chunk", "choices": [], "usage": usage}))
        if not behaviour.omit_done:
            frames.append(b"data: [DONE]\n\n")
        return self._stream(headers, frames)

    def _tool_answer(self, payload: dict[str, Any], head: dict[str, Any], headers: dict[str, str],
                     usage: dict[str, Any], call: dict[str, Any], pieces: int) -> Reply:
        """A call of the request's first tool; streamed, its arguments arrive in `pieces` parts."""
        if not payload.get("stream"):
            message = {"role": "assistant", "content": None, "refusal": None, "tool_calls": [call]}
            return Reply(200, headers=headers, body={
                **head, "object": "chat.completion", "usage": usage,
                "choices": [{"index": 0, "message": message, "logprobs": None,
                             "finish_reason": "tool_calls"}]})

        def frame(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            chunk = {**head, "object": "chat.completion.chunk", "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
            return f"data: {json.dumps(chunk)}\n\n".encode()

        function = call["function"]
        opening = {"index": 0, "id": call["id"], "type": "function",
                   "function": {"name": function["name"], "arguments": ""}}
        frames: list[bytes | float] = [frame({"role": "assistant", "content": None, "tool_calls": [opening]})]
        for piece in _pieces(function["arguments"], pieces):
            frames.append(frame({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}))
        frames.append(frame({}, "tool_calls"))
        if (payload.get("stream_options") or {}).get("include_usage"):
            tail = {**head, "object": "chat.completion.chunk", "choices": [], "usage": usage}
            frames.append(f"data: {json.dumps(tail)}\n\n".encode())
        frames.append(b"data: [DONE]\n\n")
        return self._stream(headers, frames)

    @staticmethod
    def _stream(headers: dict[str, str], frames: list[bytes | float]) -> Reply:
        return Reply(200, headers={**headers, "Content-Type": "text/event-stream; charset=utf-8",
                                   "Cache-Control": "no-cache"}, chunks=tuple(frames))
