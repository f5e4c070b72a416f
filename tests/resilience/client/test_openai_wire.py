"""The OpenAI chat stream format (resilience.client.openai_wire): one event per chunk."""
from __future__ import annotations

import pytest

from resilience.client.openai_wire import OPENAI_CHAT


def test_a_chunk_gives_its_text_finish_and_usage_and_keeps_its_bytes():
    raw = (b'{"id":"c1","choices":[{"index":0,"delta":{"content":"caf\\u00e9 "},"finish_reason":"stop"}],'
           b'"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}')
    event = OPENAI_CHAT.parse(raw)
    assert (event.text, event.finish_reason, event.usage["total_tokens"]) == ("caf\u00e9 ", "stop", 5)
    assert event.raw is raw and event.data["id"] == "c1" and not event.opaque


@pytest.mark.parametrize("raw", [b'{"choices": [', b"[1, 2]", b'"text"', b"\xff"])
def test_what_is_not_a_chunk_is_no_event(raw):
    assert OPENAI_CHAT.parse(raw) is None


def test_a_chunk_only_json_reads_is_still_a_chunk():
    # A provider escaping a token cut inside a surrogate pair: orjson refuses it, json reads it.
    event = OPENAI_CHAT.parse(b'{"choices":[{"index":0,"delta":{"content":"\\ud83d"}}]}')
    assert event is not None and event.text == "\ud83d"


def test_an_error_event_names_its_code_only():
    event = OPENAI_CHAT.parse(b'{"error": {"message": "key sk-123 echoed", "code": "overloaded"}}')
    assert event.error == "overloaded"
