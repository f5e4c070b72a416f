"""Wire-format translation between Anthropic's Messages API and OpenAI's
chat completions: pure functions over parsed JSON values, no I/O, no Django.

Owns: requests (system prompts, text, images, tool definitions, tool_choice,
tool_use / tool_result blocks with their ids, stop sequences, sampling
fields, metadata), whole responses, stream events (`AnthropicStreamWriter`
turns OpenAI chunks into Anthropic's event sequence), stop reasons and usage
(cached input tokens included), both ways. Who may import it: the HTTP edge
(aigen.edge) and the generation core; it imports nothing of the project.

Usage: Anthropic counts `input_tokens` without the cached ones
(`cache_read_input_tokens` and `cache_creation_input_tokens` are apart);
OpenAI's `prompt_tokens` includes them (`prompt_tokens_details.cached_tokens`).

Fields with no counterpart are dropped, not guessed: `top_k` on the way to
OpenAI (OpenAI refuses it), `thinking` blocks, OpenAI's `n`/`logprobs` on the
way to Anthropic.

On failure: `TranslationError` (a ValueError) naming the field of a request
that cannot be translated (the edge answers it as a 400); a provider answer
that is not the expected shape yields an empty answer, never an exception.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

#: OpenAI finish_reason -> Anthropic stop_reason.
STOP_TO_ANTHROPIC = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                     "function_call": "tool_use", "content_filter": "refusal"}
#: Anthropic stop_reason -> OpenAI finish_reason.
STOP_TO_OPENAI = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
                  "tool_use": "tool_calls", "refusal": "content_filter", "pause_turn": "stop"}
#: HTTP status -> Anthropic's error type (https://docs.anthropic.com/en/api/errors).
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
               403: "permission_error", 404: "not_found_error", 405: "invalid_request_error",
               413: "request_too_large", 415: "invalid_request_error", 429: "rate_limit_error",
               500: "api_error", 504: "timeout_error", 529: "overloaded_error"}
#: Anthropic's error type -> OpenAI's error type.
_OPENAI_ERROR_TYPES = {"invalid_request_error": "invalid_request_error",
                       "authentication_error": "invalid_request_error",
                       "permission_error": "invalid_request_error",
                       "not_found_error": "invalid_request_error",
                       "request_too_large": "invalid_request_error", "rate_limit_error": "requests"}


class TranslationError(ValueError):
    """A request that cannot be translated; `param` names its field."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param, self.message = param, message


# --- Anthropic -> OpenAI (requests) ---------------------------------------------------------------

def _system_text(system: Any) -> str:
    if isinstance(system, str):
        return system
    if isinstance(system, list):
        return "\n\n".join(block.get("text", "") for block in system
                           if isinstance(block, dict) and block.get("type") == "text")
    raise TranslationError("system", "system: must be a string or a list of text blocks")


def _image_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source")
    if not isinstance(source, dict):
        raise TranslationError(f"{where}.source", f"{where}.source: Field required")
    if source.get("type") == "url":
        return {"type": "image_url", "image_url": {"url": source.get("url", "")}}
    if source.get("type") == "base64":
        url = f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
        return {"type": "image_url", "image_url": {"url": url}}
    raise TranslationError(f"{where}.source.type", f"{where}.source.type: must be 'base64' or 'url'")


def _result_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content
                       if isinstance(part, dict) and part.get("type") == "text")
    return "" if content is None else json.dumps(content)


def _user_messages(blocks: list[Any], where: str) -> list[dict[str, Any]]:
    """One Anthropic user turn: its tool results first (OpenAI wants each
    `tool` message right after the assistant's calls), then the rest."""
    results: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for i, block in enumerate(blocks):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": block.get("text", "")})
        elif kind == "image":
            parts.append(_image_part(block, f"{where}.{i}"))
        elif kind == "tool_result":
            text = _result_text(block.get("content"))
            if block.get("is_error"):
                text = f"Error: {text}"
            results.append({"role": "tool", "tool_call_id": block.get("tool_use_id", ""), "content": text})
        elif kind not in ("thinking", "redacted_thinking", "document"):
            raise TranslationError(f"{where}.{i}.type", f"{where}.{i}.type: unsupported block type {kind!r}")
    out = list(results)
    if parts:
        simple = all(part["type"] == "text" for part in parts)
        content: Any = "".join(part["text"] for part in parts) if simple else parts
        out.append({"role": "user", "content": content})
    return out


def _assistant_message(blocks: list[Any]) -> dict[str, Any]:
    text = "".join(b.get("text", "") for b in blocks if isinstance(b, dict) and b.get("type") == "text")
    calls = [{"id": b.get("id", ""), "type": "function",
              "function": {"name": b.get("name", ""), "arguments": json.dumps(b.get("input") or {})}}
             for b in blocks if isinstance(b, dict) and b.get("type") == "tool_use"]
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    return message


def _openai_messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise TranslationError("messages", "messages: must be a non-empty list")
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        where = f"messages.{i}"
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant", "system"):
            raise TranslationError(f"{where}.role", f"{where}.role: must be 'user' or 'assistant'")
        content = message.get("content")
        if message["role"] == "system":  # a system turn mid-conversation (Claude Code sends them)
            out.append({"role": "system", "content": _system_text(content)})
            continue
        if isinstance(content, str):
            out.append({"role": message["role"], "content": content})
            continue
        if not isinstance(content, list):
            raise TranslationError(f"{where}.content",
                                   f"{where}.content: must be a string or a list of blocks")
        if message["role"] == "user":
            out.extend(_user_messages(content, f"{where}.content"))
        else:
            out.append(_assistant_message(content))
    return out


def _openai_tool_choice(choice: Any) -> tuple[Any, bool | None]:
    """(OpenAI tool_choice, parallel_tool_calls) of Anthropic's tool_choice."""
    if not isinstance(choice, dict):
        raise TranslationError("tool_choice", "tool_choice: must be an object")
    parallel = False if choice.get("disable_parallel_tool_use") else None
    kind = choice.get("type")
    if kind == "tool":
        return {"type": "function", "function": {"name": choice.get("name", "")}}, parallel
    mapped = {"auto": "auto", "any": "required", "none": "none"}.get(kind)
    if mapped is None:
        raise TranslationError("tool_choice.type", "tool_choice.type: must be auto, any, tool or none")
    return mapped, parallel


def openai_request(body: dict[str, Any], *, model: str | None = None) -> dict[str, Any]:
    """The chat-completions body of an Anthropic Messages request."""
    messages = _openai_messages(body.get("messages"))
    if body.get("system"):
        messages.insert(0, {"role": "system", "content": _system_text(body["system"])})
    out: dict[str, Any] = {"model": model or body.get("model"), "messages": messages}
    if body.get("max_tokens") is not None:
        out["max_tokens"] = body["max_tokens"]
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            out[name] = body[name]
    if body.get("stop_sequences"):
        out["stop"] = list(body["stop_sequences"])
    if body.get("tools"):
        out["tools"] = [{"type": "function", "function": {
            "name": tool.get("name", ""), "description": tool.get("description", ""),
            "parameters": tool.get("input_schema") or {"type": "object", "properties": {}}}}
            for tool in body["tools"] if isinstance(tool, dict)]
    if body.get("tool_choice") is not None:
        out["tool_choice"], parallel = _openai_tool_choice(body["tool_choice"])
        if parallel is not None:
            out["parallel_tool_calls"] = parallel
    user = (body.get("metadata") or {}).get("user_id") if isinstance(body.get("metadata"), dict) else None
    if user:
        out["user"] = str(user)
    if body.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}  # for message_delta's usage
    return out


# --- OpenAI -> Anthropic (responses, usage, stream) -----------------------------------------------

def anthropic_usage(usage: Any) -> dict[str, int]:
    """Anthropic's usage of OpenAI's: OpenAI's `prompt_tokens` include the
    cached ones (`prompt_tokens_details.cached_tokens`, read from the cache,
    and `cache_write_tokens`, written to it), Anthropic's `input_tokens` are
    the rest, with the cached ones apart (`cache_read_input_tokens`,
    `cache_creation_input_tokens`): the same total, never counted twice."""
    usage = usage if isinstance(usage, dict) else {}
    details = usage.get("prompt_tokens_details")
    details = details if isinstance(details, dict) else {}
    cached = int(details.get("cached_tokens") or 0)
    written = int(details.get("cache_write_tokens") or 0)
    prompt = int(usage.get("prompt_tokens") or 0)
    return {"input_tokens": max(prompt - cached - written, 0),
            "output_tokens": int(usage.get("completion_tokens") or 0),
            "cache_read_input_tokens": cached, "cache_creation_input_tokens": written}


def _tool_input(arguments: Any) -> Any:
    if isinstance(arguments, dict):
        return arguments
    try:
        value = json.loads(arguments or "{}")
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def message_id(openai_id: Any) -> str:
    text = str(openai_id or "")
    return text if text.startswith("msg_") else f"msg_{text or 'gateway'}"


def anthropic_response(completion: Any, *, model: str) -> dict[str, Any]:
    """Anthropic's Messages response of an OpenAI chat completion."""
    completion = completion if isinstance(completion, dict) else {}
    choices = completion.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if isinstance(message.get("content"), str) and message["content"]:
        content.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        content.append({"type": "tool_use", "id": call.get("id", ""), "name": function.get("name", ""),
                        "input": _tool_input(function.get("arguments"))})
    finish = choice.get("finish_reason")
    return {"id": message_id(completion.get("id")), "type": "message", "role": "assistant",
            "content": content, "model": model,
            "stop_reason": STOP_TO_ANTHROPIC.get(finish, "end_turn") if finish else "end_turn",
            "stop_sequence": None, "usage": anthropic_usage(completion.get("usage"))}


def sse(event: str, data: dict[str, Any]) -> bytes:
    """One Anthropic server-sent event."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


@dataclass
class AnthropicStreamWriter:
    """OpenAI stream chunks in, Anthropic's event sequence out (as SSE bytes):
    `message_start`, per content block `content_block_start` / `_delta`
    (`text_delta`, `input_json_delta`) / `_stop`, then at `finish()`
    `message_delta` (stop reason, usage) and `message_stop`.

    Anthropic's blocks come one after the other (a block's deltas only while
    it is open), OpenAI's tool calls may interleave (call 1 starts, call 0
    goes on). So the first tool call streams live, each piece of its
    arguments one `input_json_delta`; another call (its index, id and name
    kept) and text arriving while a tool block is open are held and sent
    whole as blocks of their own, in the order they began, when the message
    ends. Sequential calls lose only their liveness, never a piece."""

    model: str
    started: bool = False
    _index: int = -1
    _open: str = ""  # "text", "tool" or "" (no block open)
    _live_tool: Any = None  # the OpenAI index of the tool call whose block is open
    _held: dict[Any, dict[str, str]] = field(default_factory=dict)  # OpenAI index -> id, name, arguments
    _held_text: list[str] = field(default_factory=list)
    _stop: str | None = None
    _usage: dict[str, int] = field(default_factory=lambda: anthropic_usage(None))

    def _start(self, chunk: dict[str, Any]) -> list[bytes]:
        self.started = True
        message = {"id": message_id(chunk.get("id")), "type": "message", "role": "assistant", "content": [],
                   "model": self.model, "stop_reason": None, "stop_sequence": None,
                   "usage": anthropic_usage(chunk.get("usage"))}
        return [sse("message_start", {"type": "message_start", "message": message})]

    def _close(self) -> list[bytes]:
        if not self._open:
            return []
        self._open = ""
        return [sse("content_block_stop", {"type": "content_block_stop", "index": self._index})]

    def _block(self, kind: str, block: dict[str, Any]) -> list[bytes]:
        out = self._close()
        self._index += 1
        self._open = kind
        return [*out, sse("content_block_start", {"type": "content_block_start", "index": self._index,
                                                  "content_block": block})]

    def _delta(self, delta: dict[str, Any]) -> bytes:
        event = {"type": "content_block_delta", "index": self._index, "delta": delta}
        return sse("content_block_delta", event)

    def _text(self, text: str) -> list[bytes]:
        if self._open == "tool":
            self._held_text.append(text)
            return []
        out = [] if self._open == "text" else self._block("text", {"type": "text", "text": ""})
        return [*out, self._delta({"type": "text_delta", "text": text})]

    def _tool(self, call: dict[str, Any]) -> list[bytes]:
        position = call.get("index", 0)
        function = call.get("function") or {}
        pieces = function.get("arguments") or ""
        if position == self._live_tool:
            return [self._delta({"type": "input_json_delta", "partial_json": pieces})] if pieces else []
        if position in self._held or self._open == "tool":  # another call while one streams: held
            held = self._held.setdefault(position, {"id": "", "name": "", "arguments": ""})
            held["id"] = held["id"] or call.get("id") or ""
            held["name"] = held["name"] or function.get("name") or ""
            held["arguments"] += pieces
            return []
        self._live_tool = position
        out = self._block("tool", {"type": "tool_use", "id": call.get("id") or f"toolu_{position}",
                                   "name": function.get("name", ""), "input": {}})
        if pieces:
            out.append(self._delta({"type": "input_json_delta", "partial_json": pieces}))
        return out

    def _release(self) -> list[bytes]:
        """The held blocks, whole, in the order they began."""
        out = self._close()
        for position, held in self._held.items():
            out += self._block("tool", {"type": "tool_use", "id": held["id"] or f"toolu_{position}",
                                        "name": held["name"], "input": {}})
            if held["arguments"]:
                out.append(self._delta({"type": "input_json_delta", "partial_json": held["arguments"]}))
            out += self._close()
        if self._held_text:
            out += self._block("text", {"type": "text", "text": ""})
            out += [self._delta({"type": "text_delta", "text": "".join(self._held_text)}), *self._close()]
        self._held, self._held_text = {}, []
        return out

    def ping(self) -> list[bytes]:
        """A keep-alive; `message_start` first when nothing was sent yet (Anthropic's order)."""
        return [*([] if self.started else self._start({})), sse("ping", {"type": "ping"})]

    def feed(self, chunk: Any) -> list[bytes]:
        """The events of one OpenAI chunk (parsed JSON)."""
        if not isinstance(chunk, dict):
            return []
        out = [] if self.started else self._start(chunk)
        if isinstance(chunk.get("usage"), dict):
            self._usage = anthropic_usage(chunk["usage"])
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0):
                continue  # one answer: Anthropic has no second choice
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str) and delta["content"]:
                out += self._text(delta["content"])
            for call in delta.get("tool_calls") or ():
                if isinstance(call, dict):
                    out += self._tool(call)
            if choice.get("finish_reason"):
                self._stop = STOP_TO_ANTHROPIC.get(choice["finish_reason"], "end_turn")
        return out

    def finish(self) -> list[bytes]:
        """The events that end the message (after the last chunk)."""
        out = [] if self.started else self._start({})
        out += self._release()
        delta = {"stop_reason": self._stop or "end_turn", "stop_sequence": None}
        out.append(sse("message_delta", {"type": "message_delta", "delta": delta, "usage": self._usage}))
        out.append(sse("message_stop", {"type": "message_stop"}))
        return out


def anthropic_error(status: int, message: str, *, kind: str | None = None) -> dict[str, Any]:
    """Anthropic's error body for `status`."""
    kind = kind or ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


# --- OpenAI -> Anthropic (requests) and Anthropic -> OpenAI (responses) ---------------------------

def _anthropic_content(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for part in content or ():
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text":
            blocks.append({"type": "text", "text": part.get("text", "")})
        elif part.get("type") == "image_url":
            url = (part.get("image_url") or {}).get("url", "")
            if url.startswith("data:") and ";base64," in url:
                media, _, data = url[5:].partition(";base64,")
                source = {"type": "base64", "media_type": media, "data": data}
                blocks.append({"type": "image", "source": source})
            else:
                blocks.append({"type": "image", "source": {"type": "url", "url": url}})
    return blocks


def _anthropic_turns(messages: list[Any]) -> tuple[str, list[dict[str, Any]]]:
    """(system text, Anthropic messages) of OpenAI messages; `tool` messages
    become tool_result blocks of one user turn, consecutive turns of a role merge."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})

    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role in ("system", "developer"):
            system.append(_result_text(message.get("content")))
        elif role == "user":
            add("user", _anthropic_content(message.get("content")))
        elif role == "tool":
            add("user", [{"type": "tool_result", "tool_use_id": message.get("tool_call_id", ""),
                          "content": _result_text(message.get("content"))}])
        elif role == "assistant":
            blocks = _anthropic_content(message.get("content"))
            for call in message.get("tool_calls") or ():
                function = call.get("function") or {}
                blocks.append({"type": "tool_use", "id": call.get("id", ""), "name": function.get("name", ""),
                               "input": _tool_input(function.get("arguments"))})
            add("assistant", blocks)
        else:
            raise TranslationError(f"messages.{i}.role", f"messages[{i}].role: unsupported role {role!r}")
    return "\n\n".join(system), turns


def anthropic_request(body: dict[str, Any], *, model: str | None = None,
                      default_max_tokens: int = 4096) -> dict[str, Any]:
    """The Messages body of an OpenAI chat-completions request."""
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        raise TranslationError("messages", "'messages' must be a non-empty array")
    system, messages = _anthropic_turns(body["messages"])
    out: dict[str, Any] = {"model": model or body.get("model"), "messages": messages,
                           "max_tokens": body.get("max_completion_tokens") or body.get("max_tokens")
                           or default_max_tokens}
    if system:
        out["system"] = system
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            out[name] = body[name]
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if body.get("tools"):
        out["tools"] = [{"name": (t.get("function") or {}).get("name", ""),
                         "description": (t.get("function") or {}).get("description", ""),
                         "input_schema": (t.get("function") or {}).get("parameters")
                         or {"type": "object", "properties": {}}}
                        for t in body["tools"] if isinstance(t, dict)]
    choice = body.get("tool_choice")
    if choice is not None:
        if isinstance(choice, dict):
            out["tool_choice"] = {"type": "tool", "name": (choice.get("function") or {}).get("name", "")}
        else:
            out["tool_choice"] = {"type": {"required": "any"}.get(choice, choice)}
        if body.get("parallel_tool_calls") is False:
            out["tool_choice"]["disable_parallel_tool_use"] = True
    if body.get("user"):
        out["metadata"] = {"user_id": str(body["user"])}
    if body.get("stream"):
        out["stream"] = True
    return out


def openai_usage(usage: Any) -> dict[str, Any]:
    """OpenAI's usage of Anthropic's: `prompt_tokens` are Anthropic's
    `input_tokens` plus the tokens read from and written to its cache
    (Anthropic counts them apart); `cached_tokens` the ones read, and
    `cache_write_tokens` the ones written."""
    usage = usage if isinstance(usage, dict) else {}
    cached = int(usage.get("cache_read_input_tokens") or 0)
    created = int(usage.get("cache_creation_input_tokens") or 0)
    prompt = int(usage.get("input_tokens") or 0) + cached + created
    completion = int(usage.get("output_tokens") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached, "cache_write_tokens": created}}


def openai_response(message: Any, *, model: str, created: int = 0) -> dict[str, Any]:
    """OpenAI's chat completion of an Anthropic Messages response."""
    message = message if isinstance(message, dict) else {}
    blocks = [b for b in message.get("content") or () if isinstance(b, dict)]
    text = "".join(b.get("text", "") for b in blocks if b.get("type") == "text")
    calls = [{"id": b.get("id", ""), "type": "function",
              "function": {"name": b.get("name", ""), "arguments": json.dumps(b.get("input") or {})}}
             for b in blocks if b.get("type") == "tool_use"]
    reply: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        reply["tool_calls"] = calls
    finish = STOP_TO_OPENAI.get(message.get("stop_reason") or "end_turn", "stop")
    return {"id": f"chatcmpl-{message.get('id', '')}", "object": "chat.completion", "created": created,
            "model": model, "choices": [{"index": 0, "message": reply, "finish_reason": finish}],
            "usage": openai_usage(message.get("usage"))}


def openai_error(anthropic_body: Any, status: int) -> dict[str, Any]:
    """OpenAI's error body of Anthropic's."""
    error = anthropic_body.get("error") if isinstance(anthropic_body, dict) else None
    error = error if isinstance(error, dict) else {}
    kind = error.get("type") or ERROR_TYPES.get(status, "api_error")
    return {"error": {"message": error.get("message") or f"the provider answered {status}",
                      "type": _OPENAI_ERROR_TYPES.get(kind, "server_error"), "param": None, "code": kind}}
