"""Streamed and empty answers: a stream is consumed once, an empty answer is
never cached, and a provider that ignores "stream": true still streams."""
from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync
from django.core.cache import cache

from aigen.exceptions import ProviderError
from aigen.generation.services import atext_generate, text_generate, text_generate_stream
from tests.support.fake_openai import MODEL_ID
from tests.support.fake_upstream import Reply


def _completion(content: str) -> dict:
    return {"id": "chatcmpl-x", "object": "chat.completion", "created": 1, "model": MODEL_ID,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}


def test_a_stream_iterates_once_and_a_second_pass_changes_nothing(db, section2_data):
    stream = text_generate_stream(template_id="emergency_plan", section_id="2", data=section2_data)
    first = "".join(stream)
    assert first
    key = stream.result.cache_key
    assert cache.get(key)["content"] == first
    assert list(stream) == []  # no second provider call...
    assert cache.get(key)["content"] == first  # ...and no overwrite with an empty answer


def test_a_closed_stream_caches_nothing_and_yields_nothing(db, section2_data):
    stream = text_generate_stream(template_id="emergency_plan", section_id="2", data=section2_data)
    stream.close()
    assert list(stream) == []
    fresh = text_generate(template_id="emergency_plan", section_id="2", data=section2_data)
    assert fresh.cached is False


@pytest.mark.parametrize("face", ["sync", "async"])
def test_an_empty_answer_is_an_error_and_never_cached(openai_fake, section2_data, face):
    openai_fake.fail_next(Reply(200, body=_completion("  ")))
    generate = text_generate if face == "sync" else async_to_sync(atext_generate)
    with pytest.raises(ProviderError) as caught:
        generate(template_id="emergency_plan", section_id="2", data=section2_data)
    assert "empty" in caught.value.message
    again = generate(template_id="emergency_plan", section_id="2", data=section2_data)
    assert again.cached is False and again.content.strip()


def test_an_empty_stream_is_an_error_and_never_cached(openai_fake, section2_data):
    openai_fake.fail_next(Reply(200, body=_completion("")))  # JSON for a stream request, and empty
    stream = text_generate_stream(template_id="emergency_plan", section_id="2", data=section2_data)
    with pytest.raises(ProviderError):
        list(stream)
    assert text_generate(template_id="emergency_plan", section_id="2", data=section2_data).cached is False


def test_a_provider_ignoring_stream_true_still_streams_its_answer(openai_fake, section2_data):
    openai_fake.fail_next(Reply(200, body=_completion("整段回答")))
    stream = text_generate_stream(template_id="emergency_plan", section_id="2", data=section2_data)
    assert "".join(stream) == "整段回答"
    assert stream.result.usage.total_tokens == 5
    cached = text_generate(template_id="emergency_plan", section_id="2", data=section2_data)
    assert (cached.cached, cached.content) == (True, "整段回答")
