"""The openai SDK's transports through the resilient client: the sync and
async faces against the fake OpenAI server, with the real SDK."""
from __future__ import annotations

import json

import pytest
from asgiref.sync import async_to_sync

from aigen.exceptions import ProviderError, ProviderTimeout
from aigen.generation.providers import OpenAIProvider, Prompt
from aigen.generation.transport import _completion_as_events
from resilience.models import CallLog
from resilience.telemetry.calllog import call_log_flush as flush
from tests.support.fake_openai import CONTENT_PREFIX, MODEL_ID
from tests.support.fake_upstream import Reply

PROMPT = Prompt(messages=[{"role": "user", "content": "你好"}], params={}, template_title="t",
                section_title="s", data={})


@pytest.fixture
def provider(openai_fake) -> OpenAIProvider:
    return OpenAIProvider(model=MODEL_ID)


def test_async_complete_through_the_upstream(provider, openai_fake):
    completion = async_to_sync(provider.acomplete)(PROMPT)
    assert completion.content == CONTENT_PREFIX + "你好"
    assert completion.usage.total_tokens > 0
    flush()
    assert CallLog.objects.get().path.endswith("/chat/completions")  # one call, one row


def test_async_stream_through_the_upstream(provider):
    async def read():
        stream = await provider.astream(PROMPT)
        try:
            return [piece async for piece in stream], stream.usage
        finally:
            await stream.aclose()

    pieces, usage = async_to_sync(read)()
    assert len(pieces) > 1 and "".join(pieces) == CONTENT_PREFIX + "你好"
    assert usage.total_tokens > 0


def test_streams_one_after_another_reuse_one_connection(provider, openai_fake, openai_policy):
    """The SDK drains a stream after [DONE] so its connection goes back to the
    pool; the wrapped body must let it (a stream that closed its connection
    opened a new one for every streamed generation)."""
    openai_policy(pool_size=4)
    openai_fake.reset()

    async def read_three():
        for _ in range(3):
            stream = await provider.astream(PROMPT)
            try:
                assert "".join([piece async for piece in stream]) == CONTENT_PREFIX + "你好"
            finally:
                await stream.aclose()

    async_to_sync(read_three)()
    chats = [r for r in openai_fake.requests if r.path.endswith("/chat/completions")]
    assert len(chats) == 3
    assert len({r.connection_id for r in chats}) == 1


def test_async_failures_map_like_the_sync_ones(provider, openai_fake, openai_policy):
    openai_policy(retry_total=0, read_timeout=0.1)
    openai_fake.fail_next(Reply(200, delay=0.5))
    with pytest.raises(ProviderTimeout):
        async_to_sync(provider.acomplete)(PROMPT)
    openai_fake.fail_next(Reply(400))
    with pytest.raises(ProviderError):
        async_to_sync(provider.acomplete)(PROMPT)


def test_a_completion_becomes_the_events_of_a_stream():
    completion = {"id": "c1", "created": 5, "model": "m", "usage": {"total_tokens": 3},
                  "choices": [{"index": 0, "message": {"content": "整段"}, "finish_reason": "stop"}]}
    events = _completion_as_events(json.dumps(completion).encode()).decode().split("\n\n")
    chunk = json.loads(events[0].removeprefix("data: "))
    assert chunk["choices"][0]["delta"]["content"] == "整段" and chunk["object"] == "chat.completion.chunk"
    assert json.loads(events[1].removeprefix("data: "))["usage"] == {"total_tokens": 3}
    assert events[2] == "data: [DONE]"
    assert _completion_as_events(b"not json") == b"not json"  # left for the SDK to report
