"""Endpoints that speak Anthropic's API (Endpoint.wire_format = anthropic):
a Messages call is relayed with the endpoint's own credential (x-api-key)
and version header; a chat-completions call is translated there and back.
The real anthropic and openai SDKs call the project's ASGI application;
loopback Anthropic-compatible fakes are the endpoints."""
from __future__ import annotations

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
from resilience.client import reset_clients
from resilience.models import CallLog, Endpoint, Upstream
from resilience.telemetry.calllog import call_log_flush
from tests.support.fake_anthropic import CONTENT_PREFIX, FakeAnthropic
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
