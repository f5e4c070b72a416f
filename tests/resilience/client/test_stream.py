"""The stream supervisor's parts on their own: reading server-sent events,
the OpenAI stream format, the policy's stream timers (model, API, live
reload), and a relayed (sync) stream that breaks counted as its endpoint's
failure."""
from __future__ import annotations

import json

import pytest
from django.core.exceptions import ValidationError

from aigen.exceptions import ProviderError
from aigen.generation.providers import OpenAIProvider, Prompt
from resilience import upstream
from resilience.client.breaker import SharedBreaker
from resilience.client.openai_wire import OPENAI_CHAT
from resilience.client.stream import MAX_EVENT_BYTES, SSEReader, json_object, refusal_says
from resilience.models import CallLog, Upstream
from resilience.telemetry.calllog import call_log_flush
from tests.support.fake_openai import MODEL_ID, Behaviour, FakeOpenAI
from tests.support.roles import api_client


def test_events_split_across_chunks_and_line_endings_are_read_whole():
    reader = SSEReader()
    assert reader.feed(b"data: {\"a\"") == []
    assert reader.feed(b": 1}\r\n\r\n: keep-alive\n\nevent: x\ndata: two\ndata: lines\n\n") == [
        b'{"a": 1}', b"two\nlines"]


def test_blocks_that_are_not_sse_and_endless_events_are_reported_malformed():
    reader = SSEReader()
    assert reader.feed(b"<html>oops</html>\n\ndata: ok\n\n") == [None, b"ok"]
    assert reader.feed(b"data: " + b"x" * (MAX_EVENT_BYTES + 1)) == [None]
    assert reader.rest() == b""  # the endless event is not kept


def test_the_openai_format_reads_text_finish_usage_and_errors():
    chunk = {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"content": "hi"},
                                                   "finish_reason": "stop"}]}
    event = OPENAI_CHAT.parse(json.dumps(chunk).encode())
    assert (event.text, event.finish_reason, event.usage) == ("hi", "stop", None)
    usage = OPENAI_CHAT.parse(b'{"choices": [], "usage": {"total_tokens": 3}}')
    assert usage.usage == {"total_tokens": 3} and not usage.content
    assert OPENAI_CHAT.parse(b"{not json") is None and OPENAI_CHAT.parse(b"[1, 2]") is None
    failed = OPENAI_CHAT.parse(b'{"error": {"message": "echo sk-secret", "type": "server_error"}}')
    assert failed.error == "server_error"  # never the provider's message: it may echo a secret
    assert OPENAI_CHAT.is_done(b"[DONE]")


def test_a_continuation_asks_for_the_rest_with_an_assistant_prefix():
    body = {"model": "m", "messages": [{"role": "user", "content": "q"}], "stream": True}
    asked = OPENAI_CHAT.continuation(body, "par")
    assert asked["messages"][-1] == {"role": "assistant", "content": "par", "prefix": True}
    assert body["messages"] == [{"role": "user", "content": "q"}]  # the caller's body is untouched
    assert OPENAI_CHAT.refuses_prefill(400, b'{"error": {"message": "assistant prefill is not supported"}}')
    assert not OPENAI_CHAT.refuses_prefill(400, b'{"error": {"message": "context_length_exceeded"}}')
    assert not OPENAI_CHAT.refuses_prefill(500, b"prefix")


def test_stream_timers_are_validated_exposed_and_reloaded(make_upstream, settings,
                                                          django_capture_on_commit_callbacks):
    settings.RESILIENCE = {**settings.RESILIENCE, "POLICY_CHECK_INTERVAL": 0}
    row = make_upstream(first_token_timeout=5, stream_idle_timeout=2)
    row.stream_idle_timeout = -1
    with pytest.raises(ValidationError) as caught:
        row.full_clean()
    assert "stream_idle_timeout" in caught.value.message_dict
    assert upstream("api").policy.first_token_timeout == 5.0
    row = Upstream.objects.get(name="api")
    row.stream_max_seconds = 90
    with django_capture_on_commit_callbacks(execute=True):
        row.save()
    assert upstream("api").policy.stream_max_seconds == 90.0  # live, like every field
    assert row.history.first().stream_max_seconds == 90.0  # and in the history


def test_the_seeded_openai_upstream_has_stream_timers(db):
    from resilience.ops.services import upstreams_seed

    upstreams_seed()
    row = Upstream.objects.get(name="openai")
    assert (row.first_token_timeout, row.stream_idle_timeout, row.stream_max_seconds) == (20.0, 15.0, 600.0)


def test_a_relayed_sync_stream_that_breaks_is_a_failure_of_its_endpoint(db, settings):
    with FakeOpenAI() as fake:
        Upstream.objects.create(name="openai", base_url=fake.url, retry_total=0, breaker_fail_max=2,
                                log_sample_rate=1.0)
        fake.misbehave(MODEL_ID, Behaviour(pieces=8, cut_after=3))
        provider = OpenAIProvider(model=MODEL_ID)
        prompt = Prompt(messages=[{"role": "user", "content": "hello there"}], params={},
                        template_title="t", section_title="s", data={})
        for _ in range(2):
            stream = provider.stream(prompt)
            with pytest.raises(ProviderError):
                "".join(stream)
            stream.close()
    call_log_flush()
    assert list(CallLog.objects.values_list("outcome", flat=True)) == ["connection_error"] * 2
    assert SharedBreaker.status_of("openai", fail_max=2, reset_timeout=30)["state"] == "open"


def test_the_operations_api_shows_the_stream_timers(make_upstream):
    make_upstream(first_token_timeout=4, stream_idle_timeout=3, stream_max_seconds=120)
    client = api_client("viewer")  # policies are read with view_upstream
    [listed] = client.get("/api/resilience/upstreams").json()["upstreams"]
    assert {k: listed["policy"][k] for k in ("first_token_timeout", "stream_idle_timeout",
                                             "stream_max_seconds")} == {
        "first_token_timeout": 4.0, "stream_idle_timeout": 3.0, "stream_max_seconds": 120.0}
    detail = client.get("/api/resilience/upstreams/api").json()["upstream"]
    assert detail["stream_idle_timeout"] == 3.0


@pytest.mark.parametrize("data, parsed", [
    (b'{"a": 1}', {"a": 1}), (b"[1, 2]", None), (b'"text"', None), (b"not json", None), (b"", None),
])
def test_a_codec_reads_a_json_object_or_nothing(data, parsed):
    assert json_object(data) == parsed


def test_a_prefill_refusal_is_a_400_or_422_naming_one_of_the_words():
    words = ("prefill", "assistant")
    assert refusal_says(400, b'{"error": {"message": "Assistant PREFILL not supported"}}', words)
    assert refusal_says(422, b"prefill", words)
    assert not refusal_says(500, b"prefill", words)
    assert not refusal_says(400, b"max_tokens too large", words)
