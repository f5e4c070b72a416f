"""aigen.generation.translate: OpenAI <-> Anthropic, as pure functions."""
from __future__ import annotations

import json

import pytest

from aigen.generation import translate

IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}


def events(frames: list[bytes]) -> list[tuple[str, dict]]:
    out = []
    for frame in frames:
        head, data = frame.decode().strip().split("\n")
        out.append((head.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


def test_a_messages_request_becomes_a_chat_request():
    system = [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}]
    body = {"model": "m", "max_tokens": 10, "system": system,
            "stop_sequences": ["X"], "temperature": 0.1, "top_p": 0.9, "top_k": 3, "stream": True,
            "metadata": {"user_id": "u"},
            "tools": [{"name": "t", "description": "d", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "tool", "name": "t", "disable_parallel_tool_use": True},
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "look"}, IMAGE]},
                {"role": "assistant", "content": [{"type": "text", "text": "calling"},
                                                  {"type": "tool_use", "id": "toolu_1", "name": "t",
                                                   "input": {"a": 1}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                              "content": [{"type": "text", "text": "out"}], "is_error": True},
                                             {"type": "text", "text": "and?"}]}]}
    sent = translate.openai_request(body, model="override")
    assert sent["model"] == "override" and sent["max_tokens"] == 10 and sent["stop"] == ["X"]
    assert "top_k" not in sent and sent["user"] == "u"
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert sent["tools"] == [{"type": "function", "function": {"name": "t", "description": "d",
                                                               "parameters": {"type": "object"}}}]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "t"}}
    assert sent["parallel_tool_calls"] is False
    assert sent["messages"] == [
        {"role": "system", "content": "A\n\nB"},
        {"role": "user", "content": [
            {"type": "text", "text": "look"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
        {"role": "assistant", "content": "calling", "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "t", "arguments": '{"a": 1}'}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "Error: out"},  # right after the call
        {"role": "user", "content": "and?"}]


@pytest.mark.parametrize(("choice", "expected"), [({"type": "auto"}, "auto"), ({"type": "any"}, "required"),
                                                  ({"type": "none"}, "none")])
def test_tool_choice(choice, expected):
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "tool_choice": choice}
    assert translate.openai_request(body)["tool_choice"] == expected


@pytest.mark.parametrize(("body", "field"), [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
    ({"messages": [{"role": "user", "content": [{"type": "video"}]}]}, "messages.0.content.0.type"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
    ({"messages": [{"role": "user", "content": "x"}], "tool_choice": {"type": "maybe"}}, "tool_choice.type"),
    ({"messages": [{"role": "user", "content": "x"}], "system": 5}, "system"),
])
def test_untranslatable_requests_name_their_field(body, field):
    with pytest.raises(translate.TranslationError) as raised:
        translate.openai_request({"model": "m", **body})
    assert raised.value.param == field and field in raised.value.message


def test_a_completion_becomes_a_message_with_tool_use_stop_reason_and_cached_usage():
    completion = {"id": "chatcmpl-1", "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": "hi", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "t", "arguments": '{"q": "x"}'}}]}}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 7,
                  "prompt_tokens_details": {"cached_tokens": 60}}}
    message = translate.anthropic_response(completion, model="claude")
    assert message["id"] == "msg_chatcmpl-1" and message["type"] == "message" and message["model"] == "claude"
    assert message["content"] == [{"type": "text", "text": "hi"},
                                  {"type": "tool_use", "id": "call_1", "name": "t", "input": {"q": "x"}}]
    assert message["stop_reason"] == "tool_use" and message["stop_sequence"] is None
    assert message["usage"] == {"input_tokens": 40, "output_tokens": 7, "cache_read_input_tokens": 60,
                                "cache_creation_input_tokens": 0}


@pytest.mark.parametrize(("finish", "stop"), [("stop", "end_turn"), ("length", "max_tokens"),
                                              ("tool_calls", "tool_use"), ("content_filter", "refusal")])
def test_stop_reasons_both_ways(finish, stop):
    completion = {"choices": [{"message": {"content": "x"}, "finish_reason": finish}]}
    assert translate.anthropic_response(completion, model="m")["stop_reason"] == stop
    assert translate.openai_response({"content": [], "stop_reason": stop}, model="m")[
        "choices"][0]["finish_reason"] == finish


def test_a_stream_of_text_then_a_tool_call_in_pieces():
    writer = translate.AnthropicStreamWriter(model="claude")
    chunks = [
        {"id": "c1", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {"id": "c1", "choices": [{"index": 0, "delta": {"content": "Hel"}}]},
        {"id": "c1", "choices": [{"index": 0, "delta": {"content": "lo"}}]},
        {"id": "c1", "choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "id": "call_9", "type": "function", "function": {"name": "t", "arguments": ""}}]}}]},
        {"id": "c1", "choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": '{"q":'}}]}}]},
        {"id": "c1", "choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": ' "x"}'}}]}}]},
        {"id": "c1", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        {"id": "c1", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4}},
    ]
    frames = [frame for chunk in chunks for frame in writer.feed(chunk)] + writer.finish()
    seen = events(frames)
    assert [name for name, _ in seen] == [
        "message_start", "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_stop", "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_stop", "message_delta", "message_stop"]
    assert seen[0][1]["message"]["id"] == "msg_c1" and seen[0][1]["message"]["model"] == "claude"
    assert seen[1][1] == {"type": "content_block_start", "index": 0,
                          "content_block": {"type": "text", "text": ""}}
    assert seen[2][1]["delta"] == {"type": "text_delta", "text": "Hel"}
    assert seen[5][1]["content_block"] == {"type": "tool_use", "id": "call_9", "name": "t", "input": {}}
    assert [e[1]["delta"]["partial_json"] for e in seen[6:8]] == ['{"q":', ' "x"}']
    assert all(e[1]["index"] == 1 for e in seen[5:9])
    assert seen[9][1]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert seen[9][1]["usage"]["input_tokens"] == 9 and seen[9][1]["usage"]["output_tokens"] == 4


def test_an_empty_stream_still_is_a_whole_message():
    seen = events(translate.AnthropicStreamWriter(model="m").finish())
    assert [name for name, _ in seen] == ["message_start", "message_delta", "message_stop"]


def test_a_chat_request_becomes_a_messages_request():
    body = {"model": "gpt", "max_tokens": 20, "stop": "END", "user": "u", "parallel_tool_calls": False,
            "tools": [{"type": "function", "function": {"name": "t", "parameters": {"type": "object"}}}],
            "tool_choice": "required",
            "messages": [{"role": "system", "content": "S"},
                         {"role": "user", "content": [{"type": "text", "text": "see"}, {
                             "type": "image_url", "image_url": {"url": "data:image/jpeg;base64,QQ=="}}]},
                         {"role": "assistant", "content": None, "tool_calls": [
                             {"id": "call_1", "type": "function",
                              "function": {"name": "t", "arguments": "{}"}}]},
                         {"role": "tool", "tool_call_id": "call_1", "content": "r"}]}
    sent = translate.anthropic_request(body, model="claude")
    assert sent["model"] == "claude" and sent["system"] == "S" and sent["max_tokens"] == 20
    assert sent["stop_sequences"] == ["END"] and sent["metadata"] == {"user_id": "u"}
    assert sent["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert sent["tools"] == [{"name": "t", "description": "", "input_schema": {"type": "object"}}]
    assert sent["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "see"}, {"type": "image", "source": {
            "type": "base64", "media_type": "image/jpeg", "data": "QQ=="}}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "call_1", "name": "t", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "r"}]}]


def test_a_message_becomes_a_completion_with_cached_usage():
    message = {"id": "msg_1", "content": [{"type": "text", "text": "a"}, {"type": "tool_use", "id": "toolu_1",
                                                                        "name": "t", "input": {"k": 1}}],
               "stop_reason": "tool_use",
               "usage": {"input_tokens": 5, "output_tokens": 2, "cache_read_input_tokens": 10}}
    completion = translate.openai_response(message, model="gpt")
    choice = completion["choices"][0]
    assert choice["message"]["content"] == "a" and choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"][0]["id"] == "toolu_1"
    assert json.loads(choice["message"]["tool_calls"][0]["function"]["arguments"]) == {"k": 1}
    assert completion["usage"] == {"prompt_tokens": 15, "completion_tokens": 2, "total_tokens": 17,
                                   "prompt_tokens_details": {"cached_tokens": 10, "cache_write_tokens": 0}}


@pytest.mark.parametrize(("status", "kind"), [(400, "invalid_request_error"), (401, "authentication_error"),
                                              (403, "permission_error"), (404, "not_found_error"),
                                              (413, "request_too_large"), (429, "rate_limit_error"),
                                              (500, "api_error"), (529, "overloaded_error")])
def test_errors_in_anthropics_shape_and_back(status, kind):
    body = translate.anthropic_error(status, "why")
    assert body == {"type": "error", "error": {"type": kind, "message": "why"}}
    back = translate.openai_error(body, status)["error"]
    assert back["message"] == "why" and back["code"] == kind


# -- the quirks other gateways got wrong -----------------------------------------------------------

def _tool_chunk(index, *, id_=None, name=None, arguments=""):
    call = {"index": index, "function": {"arguments": arguments}}
    if id_:
        call.update(id=id_, type="function")
        call["function"]["name"] = name
    return {"id": "c2", "choices": [{"index": 0, "delta": {"tool_calls": [call]}}]}


def _blocks(seen):
    """The message the anthropic SDK would build: block index -> (block, arguments so far), checking
    Anthropic's order (a block's deltas only while it is open, one open at a time)."""
    blocks, open_index = {}, None
    for name, event in seen:
        if name == "content_block_start":
            assert open_index is None and event["index"] == len(blocks)
            open_index = event["index"]
            blocks[open_index] = [event["content_block"], ""]
        elif name == "content_block_delta":
            assert event["index"] == open_index, "a delta for a block that is not open"
            delta = event["delta"]
            blocks[open_index][1] += delta.get("partial_json", "") + delta.get("text", "")
        elif name == "content_block_stop":
            assert event["index"] == open_index
            open_index = None
    assert open_index is None
    return blocks


def test_interleaved_streamed_tool_calls_become_whole_blocks_one_after_the_other():
    """OpenAI's parallel tool calls may interleave (call 1 starts while call 0's arguments still come):
    each becomes one tool_use block, its id and arguments its own, never a delta to a closed block."""
    writer = translate.AnthropicStreamWriter(model="claude")
    chunks = [
        {"id": "c2", "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Let me look."}}]},
        _tool_chunk(0, id_="call_a", name="weather"),
        _tool_chunk(0, arguments='{"city":'),
        _tool_chunk(1, id_="call_b", name="time"),
        _tool_chunk(1, arguments='{"zone":'),
        _tool_chunk(0, arguments=' "Oslo"}'),
        _tool_chunk(2, id_="call_c", name="weather", arguments='{"city": "Rome"}'),
        _tool_chunk(1, arguments=' "CET"}'),
        {"id": "c2", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    ]
    frames = [frame for chunk in chunks for frame in writer.feed(chunk)] + writer.finish()
    seen = events(frames)
    blocks = _blocks(seen)
    assert blocks[0] == [{"type": "text", "text": ""}, "Let me look."]
    tools = [(block["id"], block["name"], json.loads(arguments))
             for block, arguments in list(blocks.values())[1:]]
    assert tools == [("call_a", "weather", {"city": "Oslo"}), ("call_b", "time", {"zone": "CET"}),
                     ("call_c", "weather", {"city": "Rome"})]
    assert seen[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_sequential_tool_calls_keep_their_order_and_pieces():
    writer = translate.AnthropicStreamWriter(model="claude")
    chunks = [_tool_chunk(0, id_="call_a", name="a"), _tool_chunk(0, arguments='{"x":'),
              _tool_chunk(0, arguments=" 1}"), _tool_chunk(1, id_="call_b", name="b"),
              _tool_chunk(1, arguments='{"y": 2}')]
    frames = [frame for chunk in chunks for frame in writer.feed(chunk)] + writer.finish()
    blocks = _blocks(events(frames))
    assert [(b["id"], json.loads(a)) for b, a in blocks.values()] == [("call_a", {"x": 1}),
                                                                       ("call_b", {"y": 2})]


def test_usage_both_ways_counts_every_input_token_once():
    """Anthropic's input_tokens exclude the tokens read from and written to its cache; OpenAI's
    prompt_tokens include them (cached_tokens: those read). LiteLLM reported prompt_tokens as
    Anthropic's input_tokens alone (cache hits vanished from the bill) and others added the cached
    ones twice; the gateway's total is the same whichever side it is read on."""
    anthropic_usage = {"input_tokens": 12, "output_tokens": 7, "cache_read_input_tokens": 1800,
                       "cache_creation_input_tokens": 200}
    openai_usage = translate.openai_usage(anthropic_usage)
    assert openai_usage == {"prompt_tokens": 2012, "completion_tokens": 7, "total_tokens": 2019,
                            "prompt_tokens_details": {"cached_tokens": 1800, "cache_write_tokens": 200}}
    assert translate.anthropic_usage(openai_usage) == anthropic_usage  # and back, unchanged
    plain = {"prompt_tokens": 2006, "completion_tokens": 300,
             "prompt_tokens_details": {"cached_tokens": 1920}}  # OpenAI's own example
    assert translate.anthropic_usage(plain) == {"input_tokens": 86, "output_tokens": 300,
                                                "cache_read_input_tokens": 1920,
                                                "cache_creation_input_tokens": 0}
    assert translate.anthropic_usage({"prompt_tokens": 5, "completion_tokens": 1}) == {
        "input_tokens": 5, "output_tokens": 1, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}
    assert translate.anthropic_usage({"prompt_tokens": 5, "prompt_tokens_details": None})["input_tokens"] == 5


def test_a_streamed_answers_cached_usage_reaches_message_delta():
    writer = translate.AnthropicStreamWriter(model="claude")
    frames = writer.feed({"id": "c3", "choices": [{"index": 0, "delta": {"content": "hi"}}], "usage": None})
    frames += writer.feed({"id": "c3", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    frames += writer.feed({"id": "c3", "choices": [], "usage": {
        "prompt_tokens": 2006, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 1920}}})
    delta = events(frames + writer.finish())[-2][1]
    assert delta["usage"] == {"input_tokens": 86, "output_tokens": 3, "cache_read_input_tokens": 1920,
                              "cache_creation_input_tokens": 0}
