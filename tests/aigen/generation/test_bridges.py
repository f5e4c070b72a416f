"""The wire bridges, attempt by attempt (Endpoint.wire_format): a Messages
call to an Anthropic-format endpoint is relayed with the endpoint's own
credential (x-api-key) and version header, a chat-completions call is
translated there and back; in a pool that mixes formats, failover moves a
call from one format to the other (plain and streamed, a cut stream
continued across formats) and the caller sees one answer in its own.
The real anthropic and openai SDKs call the project's ASGI application;
loopback Anthropic- and OpenAI-compatible fakes are the endpoints."""
from __future__ import annotations

import json

import anthropic
import httpx
import httpx2
import openai
import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth import get_user_model

from aigen.edge import openai as openai_views
from aigen.edge.tokens import token_issue
from aigen.edge.tokens import users as token_users
from aigen.generation.bridges import CHAT_WIRE, MESSAGES_WIRE
from resilience.client import reset_clients
from resilience.client.endpoints import Pool, snapshot
from resilience.client.failures import CONTEXT_LENGTH, unfixable_answer
from resilience.client.policy import PolicyRetry
from resilience.models import CallLog, Endpoint, Upstream
from resilience.telemetry.calllog import call_log_flush
from tests.resilience.conftest import Clock
from tests.support.fake_anthropic import CONTENT_PREFIX, FakeAnthropic
from tests.support.fake_openai import Behaviour, FakeOpenAI
from tests.support.fake_upstream import Reply

MODEL = "claude-native"
TOOL = {"type": "function", "function": {"name": "echo", "parameters": {
    "type": "object", "properties": {"text": {"type": "string"}}}}}


@pytest.fixture
def claude(transactional_db, settings):
    settings.RESILIENCE = {**settings.RESILIENCE, "SECRETS": {"UPSTREAM_CLAUDE_KEY": "sk-ant-primary",
                                                              "UPSTREAM_CLAUDE_FALLBACK": "sk-ant-fallback"}}
    settings.AIGEN = {**settings.AIGEN, "GENERATE_THROTTLE": "100000/min"}
    with FakeAnthropic() as primary, FakeAnthropic() as fallback:
        row = Upstream(name="claude", base_url=primary.url, served_models=[MODEL],
                       endpoint_strategy="priority", auth_kind="bearer", auth_env_var="UPSTREAM_CLAUDE_KEY",
                       connect_timeout=0.5,
                       read_timeout=5, deadline=10, retry_total=2, retry_backoff_factor=0, retry_jitter=0,
                       retry_statuses=[429, 500, 502, 503, 504], retry_methods=["POST"],
                       breaker_fail_max=3, log_sample_rate=1.0, stream_idle_timeout=2)
        row.full_clean()
        row.save()
        Endpoint.objects.create(upstream=row, name="primary", base_url=primary.url, priority=0,
                                wire_format="anthropic")
        Endpoint.objects.create(upstream=row, name="fallback", base_url=fallback.url, priority=1,
                                auth_env_var="UPSTREAM_CLAUDE_FALLBACK", wire_format="anthropic")
        reset_clients()
        openai_views.models.clear()
        token_users.clear()
        token = token_issue(user=get_user_model().objects.create_user("caller"))
        yield token, primary, fallback


def run(work):
    from project.asgi import application

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=application),
                                     base_url="http://testserver") as http, \
                httpx2.AsyncClient(transport=httpx2.ASGITransport(app=application),
                                   base_url="http://testserver") as http2:
            return await work(http, http2)

    return async_to_sync(go)()


def claude_sdk(token, http):
    return anthropic.AsyncAnthropic(api_key=token, base_url="http://testserver", http_client=http,
                                    max_retries=0)


def openai_sdk(token, http2):
    return openai.AsyncOpenAI(api_key=token, base_url="http://testserver/v1", http_client=http2,
                              max_retries=0)


def ask(text):
    return [{"role": "user", "content": text}]


def test_a_messages_call_is_relayed_with_the_endpoints_own_key_and_version(claude):
    token, primary, _ = claude
    answer = run(lambda http, _: claude_sdk(token, http).messages.create(
        model=MODEL, max_tokens=16, messages=ask("hello")))
    assert answer.content[0].text == CONTENT_PREFIX + "hello" and answer.id.startswith("msg_fake")
    assert answer.usage.cache_read_input_tokens == 3
    sent = primary.message_requests()[-1]
    assert sent.headers["x-api-key"] == "sk-ant-primary" and "Authorization" not in sent.headers
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert token not in str(dict(sent.headers))
    call_log_flush()
    assert CallLog.objects.filter(upstream="claude", endpoint="primary").exists()


def test_a_relayed_stream_cut_after_its_first_text_goes_on_at_the_fallback_as_one_answer(claude):
    token, primary, fallback = claude
    primary.cut_next_stream(after=1)

    async def work(http, _):
        async with claude_sdk(token, http).messages.stream(model=MODEL, max_tokens=64,
                                                           messages=ask("streamed answer")) as stream:
            return await stream.get_final_message()

    final = run(work)
    assert final.content[0].text == CONTENT_PREFIX + "streamed answer"
    assert final.stop_reason == "end_turn"
    continued = fallback.message_requests()[-1].json()
    assert continued["messages"][-1]["role"] == "assistant"  # the text so far, as a prefill
    assert fallback.message_requests()[-1].headers["x-api-key"] == "sk-ant-fallback"


def test_a_chat_completion_is_translated_to_the_anthropic_endpoint_and_back(claude):
    token, primary, _ = claude
    answer = run(lambda _, http2: openai_sdk(token, http2).chat.completions.create(
        model=MODEL, messages=[{"role": "system", "content": "S"}, *ask("hi")], max_tokens=20))
    assert answer.choices[0].message.content == CONTENT_PREFIX + "hi"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage.prompt_tokens_details.cached_tokens == 3 and answer.usage.prompt_tokens == 13
    sent = primary.message_requests()[-1].json()
    assert sent["system"] == "S" and sent["max_tokens"] == 20
    assert sent["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]


def test_a_streamed_chat_tool_call_comes_back_in_openai_chunks(claude):
    token, _, _ = claude

    async def work(_, http2):
        stream = await openai_sdk(token, http2).chat.completions.create(
            model=MODEL, messages=ask("ping"), tools=[TOOL], tool_choice="required", stream=True)
        calls, finish, text = {}, None, ""
        async for chunk in stream:
            for choice in chunk.choices:
                text += choice.delta.content or ""
                for call in choice.delta.tool_calls or ():
                    entry = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
                    entry["id"] = call.id or entry["id"]
                    entry["name"] = (call.function and call.function.name) or entry["name"]
                    entry["arguments"] += (call.function and call.function.arguments) or ""
                finish = choice.finish_reason or finish
        return calls, finish

    calls, finish = run(work)
    assert finish == "tool_calls"
    assert calls[0]["name"] == "echo" and calls[0]["id"].startswith("toolu_fake")
    assert calls[0]["arguments"].replace(" ", "") == '{"text":"ping"}'


def test_provider_errors_keep_their_shape_per_front_door(claude):
    token, primary, _ = claude
    primary.fail_next(Reply(400, body={"type": "error", "error": {"type": "invalid_request_error",
                                                                  "message": "bad max_tokens"}}))
    with pytest.raises(anthropic.BadRequestError) as raised:
        run(lambda http, _: claude_sdk(token, http).messages.create(model=MODEL, max_tokens=8,
                                                                    messages=ask("x")))
    assert raised.value.body == {"type": "error", "error": {"type": "invalid_request_error",
                                                            "message": "bad max_tokens"}}
    primary.fail_next(Reply(400, body={"type": "error", "error": {"type": "invalid_request_error",
                                                                  "message": "bad max_tokens"}}))
    with pytest.raises(openai.BadRequestError) as caught:
        run(lambda _, http2: openai_sdk(token, http2).chat.completions.create(model=MODEL,
                                                                              messages=ask("x")))
    assert caught.value.body["message"] == "bad max_tokens"
    assert caught.value.body["code"] == "invalid_request_error"


MIXED = "claude-mixed"


@pytest.fixture
def mixed(transactional_db, settings):
    """A pool of [an Anthropic-format primary, an OpenAI-format secondary] serving MIXED; the
    secondary answers with the primary's prefix, so a continuation across them is one answer."""
    settings.RESILIENCE = {**settings.RESILIENCE, "SECRETS": {"UPSTREAM_CLAUDE_KEY": "sk-ant-primary",
                                                              "UPSTREAM_OPENAI_KEY": "sk-openai"}}
    settings.AIGEN = {**settings.AIGEN, "GENERATE_THROTTLE": "100000/min"}
    with FakeAnthropic() as primary, FakeOpenAI() as secondary:
        secondary.misbehave("*", Behaviour(content_prefix=CONTENT_PREFIX))
        row = Upstream(name="mixed", base_url=primary.url, served_models=[MIXED],
                       endpoint_strategy="priority", auth_kind="bearer", auth_env_var="UPSTREAM_CLAUDE_KEY",
                       connect_timeout=0.5,
                       read_timeout=5, deadline=10, retry_total=2, retry_backoff_factor=0, retry_jitter=0,
                       retry_statuses=[429, 500, 502, 503, 504, 529], retry_methods=["POST"],
                       breaker_fail_max=5, log_sample_rate=1.0, stream_idle_timeout=2)
        row.full_clean()
        row.save()
        Endpoint.objects.create(upstream=row, name="primary", base_url=primary.url, priority=0,
                                wire_format="anthropic")
        Endpoint.objects.create(upstream=row, name="secondary", base_url=secondary.url, priority=1,
                                auth_env_var="UPSTREAM_OPENAI_KEY", wire_format="openai")
        reset_clients()
        openai_views.models.clear()
        token_users.clear()
        yield token_issue(user=get_user_model().objects.create_user("caller")), primary, secondary


def _chat_text(stream_chunks):
    text, ids, finish = "", set(), None
    for chunk in stream_chunks:
        ids.add(chunk.id)
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    return text, ids, finish


def test_a_message_fails_over_from_the_anthropic_primary_to_the_openai_secondary(mixed):
    token, primary, secondary = mixed
    primary.fail_next(Reply(500), Reply(500))
    answer = run(lambda http, _: claude_sdk(token, http).messages.create(
        model=MIXED, max_tokens=16, system="S", messages=ask("over")))
    assert answer.type == "message" and answer.content[0].text == CONTENT_PREFIX + "over"
    assert answer.stop_reason == "end_turn" and answer.model == MIXED
    assert len(primary.message_requests()) == 2
    sent = secondary.requests[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.json()["messages"] == [{"role": "system", "content": "S"}, *ask("over")]
    assert sent.headers["Authorization"] == "Bearer sk-openai" and "anthropic-version" not in sent.headers
    call_log_flush()
    assert set(CallLog.objects.filter(upstream="mixed").values_list("endpoint", flat=True)) == {"secondary"}


def test_a_chat_completion_fails_over_from_the_anthropic_primary_to_the_openai_secondary(mixed):
    token, primary, secondary = mixed
    healthy = run(lambda _, http2: openai_sdk(token, http2).chat.completions.create(
        model=MIXED, messages=ask("first"), max_tokens=16))
    assert healthy.choices[0].message.content == CONTENT_PREFIX + "first"  # translated from the primary
    assert primary.message_requests()[-1].json()["max_tokens"] == 16
    primary.fail_next(Reply(529, retry_after="1"), Reply(529, retry_after="1"))
    answer = run(lambda _, http2: openai_sdk(token, http2).chat.completions.create(
        model=MIXED, messages=ask("second"), max_tokens=16))
    assert answer.choices[0].message.content == CONTENT_PREFIX + "second"
    assert answer.object == "chat.completion" and answer.choices[0].finish_reason == "stop"
    assert secondary.chat_requests()[-1]["messages"] == ask("second")  # sent as it is


def test_a_message_stream_cut_on_the_anthropic_primary_is_continued_on_the_openai_secondary(mixed):
    token, primary, secondary = mixed
    primary.cut_next_stream(after=1)

    async def work(http, _):
        async with claude_sdk(token, http).messages.stream(model=MIXED, max_tokens=64,
                                                           messages=ask("streamed answer")) as stream:
            return await stream.get_final_message()

    final = run(work)
    assert final.content[0].text == CONTENT_PREFIX + "streamed answer"
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0
    continued = secondary.chat_requests()[-1]
    assert continued["messages"][-1]["role"] == "assistant"  # the text so far, as a prefill
    assert continued["stream"] is True


def test_a_chat_stream_refused_by_the_anthropic_primary_restarts_on_the_openai_secondary(mixed):
    token, primary, secondary = mixed
    primary.fail_next(Reply(500), Reply(500))

    async def work(_, http2):
        stream = await openai_sdk(token, http2).chat.completions.create(
            model=MIXED, messages=ask("restarted"), stream=True)
        return _chat_text([chunk async for chunk in stream])

    text, _, finish = run(work)
    assert text == CONTENT_PREFIX + "restarted" and finish == "stop"
    assert secondary.chat_calls == 1


def test_a_chat_stream_cut_on_the_anthropic_primary_is_continued_as_one_answer(mixed):
    token, primary, secondary = mixed
    primary.cut_next_stream(after=2)

    async def work(_, http2):
        stream = await openai_sdk(token, http2).chat.completions.create(
            model=MIXED, messages=ask("a longer streamed answer"), stream=True,
            stream_options={"include_usage": True})
        chunks = [chunk async for chunk in stream]
        return _chat_text(chunks), chunks[-1].usage

    (text, ids, finish), usage = run(work)
    assert text == CONTENT_PREFIX + "a longer streamed answer" and finish == "stop"
    assert len(ids) == 1  # one id for the one answer
    assert usage is not None and usage.completion_tokens > 0
    assert secondary.chat_requests()[-1]["messages"][-1]["role"] == "assistant"


def test_back_the_other_way_an_openai_primary_cut_is_continued_on_an_anthropic_secondary(mixed):
    token, primary, secondary = mixed
    Endpoint.objects.filter(name="secondary").update(priority=0)
    Endpoint.objects.filter(name="primary").update(priority=1)
    reset_clients()
    secondary.misbehave("*", Behaviour(content_prefix=CONTENT_PREFIX, pieces=8, cut_after=3), times=2)

    def both(http, http2):
        async def go():
            async with claude_sdk(token, http).messages.stream(model=MIXED, max_tokens=64,
                                                               messages=ask("the other way")) as stream:
                streamed = await stream.get_final_message()
            chat = await openai_sdk(token, http2).chat.completions.create(
                model=MIXED, messages=ask("the other way"), stream=True)
            return streamed, _chat_text([chunk async for chunk in chat])
        return go()

    streamed, (text, ids, _) = run(both)
    assert streamed.content[0].text == CONTENT_PREFIX + "the other way"
    assert text == CONTENT_PREFIX + "the other way" and len(ids) == 1
    prefills = [r.json() for r in primary.message_requests()]
    assert len(prefills) == 2 and all(body["messages"][-1]["role"] == "assistant" for body in prefills)
    assert primary.message_requests()[-1].headers["x-api-key"] == "sk-ant-primary"


@pytest.mark.parametrize("status", [503, 529])
def test_an_anthropic_529_overloaded_is_retried_elsewhere_and_cools_its_endpoint_like_a_503(
        mixed, monkeypatch, status):
    token, primary, secondary = mixed
    clock = Clock(start=2_000_000_000.0)
    monkeypatch.setattr(Pool, "clock", staticmethod(clock))

    async def no_wait(seconds):
        return None

    monkeypatch.setattr(PolicyRetry, "asleeper", staticmethod(no_wait))
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    primary.fail_next(*[Reply(status, body=overloaded, retry_after="5")] * 2)  # retried once there, as a 5xx
    answer = run(lambda http, _: claude_sdk(token, http).messages.create(model=MIXED, max_tokens=8,
                                                                         messages=ask("busy")))
    assert answer.content[0].text == CONTENT_PREFIX + "busy"
    pool = {entry["name"]: entry for entry in snapshot(Upstream.objects.get(name="mixed"))["endpoints"]}
    assert pool["primary"]["cooling_for"] == 5 and pool["secondary"]["cooling_for"] == 0
    run(lambda http, _: claude_sdk(token, http).messages.create(model=MIXED, max_tokens=8,
                                                                messages=ask("next")))
    assert len(primary.message_requests()) == 2 and secondary.chat_calls == 2  # the cooled primary is left
    clock.advance(6)
    run(lambda http, _: claude_sdk(token, http).messages.create(model=MIXED, max_tokens=8,
                                                                messages=ask("back")))
    assert len(primary.message_requests()) == 3


def test_a_529_from_the_only_endpoint_left_reaches_a_messages_caller_as_overloaded(mixed):
    token, primary, _ = mixed
    Endpoint.objects.filter(name="secondary").update(enabled=False)
    reset_clients()
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    primary.fail_next(*[Reply(529, body=overloaded, retry_after="1")] * 3)
    with pytest.raises(anthropic.APIStatusError) as raised:
        run(lambda http, _: claude_sdk(token, http).messages.create(model=MIXED, max_tokens=8,
                                                                    messages=ask("busy")))
    assert raised.value.status_code == 529 and raised.value.body["error"]["type"] == "overloaded_error"
    assert raised.value.response.headers["retry-after"] == "1"


def test_a_streamed_chat_from_the_anthropic_endpoint_reports_its_cached_input_tokens(claude):
    token, _, _ = claude

    async def work(_, http2):
        stream = await openai_sdk(token, http2).chat.completions.create(
            model=MODEL, messages=ask("usage"), stream=True, stream_options={"include_usage": True})
        return [chunk async for chunk in stream]

    chunks = run(work)
    usage = next(chunk.usage for chunk in reversed(chunks) if chunk.usage is not None)
    # message_start said 10 uncached + 3 read from the cache, message_delta the output tokens
    assert usage.prompt_tokens == 13 and usage.prompt_tokens_details.cached_tokens == 3
    assert usage.completion_tokens > 1 and usage.total_tokens == 13 + usage.completion_tokens


def test_a_decoded_context_length_refusal_still_asks_the_fallback_model():
    refusal = {"error": {"message": "This model's maximum context length is 8 tokens.",
                         "type": "invalid_request_error", "param": "messages",
                         "code": "context_length_exceeded"}}
    decoded = MESSAGES_WIRE.decode(json.dumps(refusal).encode(), status=400, target="openai",
                                   request={"model": "m"})
    body = json.loads(decoded)
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert unfixable_answer(400, decoded) == CONTEXT_LENGTH


def test_bridges_say_what_goes_where():
    path, body, headers = MESSAGES_WIRE.encode(
        {"model": "m", "max_tokens": 5, "system": "S", "messages": ask("x")},
        {"anthropic-version": "2023-06-01", "anthropic-beta": "b", "x-trace": "t"}, target="openai")
    assert path == "chat/completions" and headers == {"x-trace": "t"}
    assert body["messages"][0] == {"role": "system", "content": "S"}
    path, body, headers = CHAT_WIRE.encode({"model": "m", "messages": ask("x")}, {}, target="anthropic")
    assert path == "messages" and headers == {"anthropic-version": "2023-06-01"}
    assert body["max_tokens"] == 4096
    with pytest.raises(ValueError):
        MESSAGES_WIRE.encode({"model": "m", "messages": []}, {}, target="openai")
    not_json = CHAT_WIRE.decode(b"<html>", status=502, target="anthropic", request={})
    assert json.loads(not_json)["error"]["message"] == "the provider answered 502"


def test_a_chat_body_that_cannot_be_put_in_anthropics_format_is_refused_naming_why(claude):
    token, primary, fallback = claude
    with pytest.raises(openai.BadRequestError) as raised:
        run(lambda _, http2: openai_sdk(token, http2).chat.completions.create(
            model=MODEL, messages=[{"role": "function", "name": "f", "content": "x"}]))
    assert raised.value.body["code"] == "untranslatable_request"
    assert "messages[0].role" in raised.value.body["message"]
    assert primary.message_requests() == [] and fallback.message_requests() == []
