"""aigen.generation.anthropic_wire: Anthropic's stream events parsed into
OpenAI chunks for the stream supervisor, one parser per attempt: tool calls
numbered as OpenAI numbers them, usage from both halves of the stream."""
from __future__ import annotations

import json

from aigen.generation.anthropic_wire import ANTHROPIC_MESSAGES


def _parsed(events):
    parser = ANTHROPIC_MESSAGES.for_attempt()
    return [parser.parse(json.dumps(event).encode()) for event in events]


START = {"type": "message_start", "message": {
    "id": "msg_1", "model": "claude", "content": [], "usage": {
        "input_tokens": 12, "output_tokens": 1, "cache_read_input_tokens": 1800,
        "cache_creation_input_tokens": 200}}}


def _tool(index, name):
    return {"type": "content_block_start", "index": index,
            "content_block": {"type": "tool_use", "id": f"toolu_{name}", "name": name, "input": {}}}


def _args(index, piece):
    return {"type": "content_block_delta", "index": index,
            "delta": {"type": "input_json_delta", "partial_json": piece}}


def test_tool_calls_after_a_text_block_are_numbered_from_zero_as_openai_numbers_them():
    """LiteLLM #5231 and Bifrost #1961: the block index (1 after a text block), or 0 for every call,
    made OpenAI clients glue two calls into one."""
    events = _parsed([
        START,
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Checking."}},
        {"type": "content_block_stop", "index": 0},
        _tool(1, "weather"), _args(1, '{"city":'), _args(1, ' "Oslo"}'),
        {"type": "content_block_stop", "index": 1},
        _tool(2, "time"), _args(2, '{"zone": "CET"}'), {"type": "content_block_stop", "index": 2},
    ])
    calls: dict[int, dict] = {}
    for event in events:
        for choice in (event.data or {}).get("choices") or ():
            for call in choice["delta"].get("tool_calls") or ():
                entry = calls.setdefault(call["index"], {"id": "", "name": "", "arguments": ""})
                entry["id"] = call.get("id") or entry["id"]
                entry["name"] = call["function"].get("name") or entry["name"]
                entry["arguments"] += call["function"].get("arguments") or ""
    assert calls == {0: {"id": "toolu_weather", "name": "weather", "arguments": '{"city": "Oslo"}'},
                     1: {"id": "toolu_time", "name": "time", "arguments": '{"zone": "CET"}'}}
    assert events[4].opaque and not events[2].opaque


def test_the_final_usage_has_message_starts_input_and_cache_tokens_with_the_output():
    events = _parsed([START, {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                              "usage": {"output_tokens": 40}}])
    final = events[-1]
    assert final.finish_reason == "stop"
    assert final.usage == {"prompt_tokens": 2012, "completion_tokens": 40, "total_tokens": 2052,
                           "prompt_tokens_details": {"cached_tokens": 1800, "cache_write_tokens": 200}}


def test_each_attempt_has_its_own_parser():
    first = ANTHROPIC_MESSAGES.for_attempt()
    first.parse(json.dumps(START).encode())
    first.parse(json.dumps(_tool(1, "a")).encode())
    second = ANTHROPIC_MESSAGES.for_attempt()
    event = second.parse(json.dumps(_tool(1, "b")).encode())
    assert event.data["choices"][0]["delta"]["tool_calls"][0]["index"] == 0
    delta = second.parse(json.dumps({"type": "message_delta", "delta": {"stop_reason": "tool_use"},
                                     "usage": {"output_tokens": 5}}).encode())
    assert delta.usage["prompt_tokens"] == 0 and delta.finish_reason == "tool_calls"  # no message_start seen
