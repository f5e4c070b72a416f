"""The Anthropic Messages front door (/v1/messages, /v1/messages/count_tokens)
with the real anthropic SDK as the caller: the project's ASGI application
behind httpx's ASGI transport, fake OpenAI-compatible providers on loopback
as the upstream's endpoints (the call is translated there and back)."""
from __future__ import annotations

import asyncio
import contextlib
import json

import anthropic
import httpx
import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth import get_user_model

from aigen.edge import openai as openai_views
from aigen.edge.tokens import token_issue
from aigen.edge.tokens import users as token_users
from aigen.generation.ledger import usage_flush
from aigen.models import UsageLedger
from resilience.client import reset_clients
from resilience.client.breaker import SharedBreaker
from resilience.models import CallLog, Endpoint, Upstream
from resilience.telemetry.calllog import call_log_flush
from tests.support.fake_openai import CONTENT_PREFIX, Behaviour
from tests.support.fake_upstream import Reply

MODEL = "claude-gateway"
TOOL = {"name": "echo", "description": "Echo the text.",
        "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}}


@pytest.fixture
def gateway(transactional_db, llm_gateway):
    """An `llm` upstream serving MODEL from two OpenAI-format providers."""
    return llm_gateway([MODEL])


def sdk_run(key: str, work, **options):
    """Run `await work(client)` with an AsyncAnthropic client whose HTTP goes
    into the project's ASGI application."""
    from project.asgi import application

    async def go():
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            client = anthropic.AsyncAnthropic(api_key=key, base_url="http://testserver", http_client=http,
                                              max_retries=0, **options)
            return await work(client)

    return async_to_sync(go)()


def ask(text: str):
    return [{"role": "user", "content": text}]


def test_a_message_is_translated_to_the_openai_provider_and_back(gateway, providers):
    primary, _ = providers
    answer = sdk_run(gateway, lambda c: c.messages.create(
        model=MODEL, max_tokens=64, system="Be brief.", messages=ask("hello"), stop_sequences=["END"],
        temperature=0.2, top_k=5, metadata={"user_id": "u-1"}))
    assert answer.type == "message" and answer.role == "assistant" and answer.model == MODEL
    assert answer.content[0].type == "text" and answer.content[0].text == CONTENT_PREFIX + "hello"
    assert answer.stop_reason == "end_turn" and answer.stop_sequence is None
    assert answer.usage.input_tokens > 0 and answer.usage.output_tokens > 0
    sent = primary.chat_requests()[-1]
    assert sent["messages"] == [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "hello"}]
    assert sent["max_tokens"] == 64 and sent["stop"] == ["END"] and sent["user"] == "u-1"
    assert "top_k" not in sent
    assert primary.requests[-1].headers["Authorization"] == "Bearer sk-primary"
    assert gateway not in json.dumps(dict(primary.requests[-1].headers))
    call_log_flush()
    assert CallLog.objects.filter(upstream="llm", endpoint="primary").exists()


def test_bearer_auth_works_and_the_version_header_is_echoed(gateway):
    from project.asgi import application

    async def go():
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            body = {"model": MODEL, "max_tokens": 8, "messages": ask("x")}
            return await http.post("/v1/messages", json=body, headers={"Authorization": f"Bearer {gateway}",
                                            "anthropic-version": "2023-06-01"})

    response = async_to_sync(go)()
    assert response.status_code == 200
    assert response.headers["anthropic-version"] == "2023-06-01"
    assert response.json()["content"][0]["text"] == CONTENT_PREFIX + "x"


def test_a_failing_primary_fails_over_to_the_fallback(gateway, providers):
    primary, fallback = providers
    primary.fail_next(Reply(503), Reply(503), Reply(503))
    answer = sdk_run(gateway, lambda c: c.messages.create(model=MODEL, max_tokens=8, messages=ask("again")))
    assert answer.content[0].text == CONTENT_PREFIX + "again"
    assert fallback.chat_requests()[-1]["model"] == "fallback-model"


def test_a_stream_comes_in_anthropics_event_sequence(gateway, providers):
    async def work(client):
        kinds = []
        async with client.messages.stream(model=MODEL, max_tokens=64, messages=ask("streamed")) as stream:
            async for event in stream:
                kinds.append(event.type)
            final = await stream.get_final_message()
        return kinds, final

    kinds, final = sdk_run(gateway, work)
    assert kinds[0] == "message_start" and kinds[1] == "content_block_start"
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert "text" in kinds  # the SDK's event per text_delta
    assert final.content[0].text == CONTENT_PREFIX + "streamed"
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0


def test_tool_use_with_streamed_arguments_and_the_result_going_back(gateway, providers):
    primary, _ = providers

    async def work(client):
        deltas = []
        async with client.messages.stream(model=MODEL, max_tokens=64, tools=[TOOL],
                                          tool_choice={"type": "any"}, messages=ask("ping")) as stream:
            async for event in stream:
                if event.type == "input_json":
                    deltas.append(event.partial_json)
            first = await stream.get_final_message()
        use = first.content[-1]
        second = await client.messages.create(model=MODEL, max_tokens=64, tools=[TOOL], messages=[
            *ask("ping"), {"role": "assistant", "content": [block.model_dump() for block in first.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "pong"}]}])
        return deltas, first, second

    deltas, first, second = sdk_run(gateway, work)
    assert len(deltas) > 1  # the arguments arrived in pieces
    use = first.content[-1]
    assert use.type == "tool_use" and use.name == "echo" and use.input == {"text": "ping"}
    assert first.stop_reason == "tool_use"
    sent = primary.chat_requests()[0]
    assert sent["tool_choice"] == "required" and sent["tools"][0]["function"]["name"] == "echo"
    back = primary.chat_requests()[-1]["messages"]
    assert back[-2]["tool_calls"][0]["id"] == use.id  # ids kept both ways
    assert back[-1] == {"role": "tool", "tool_call_id": use.id, "content": "pong"}
    assert second.stop_reason == "end_turn" and second.content[0].text == CONTENT_PREFIX + "pong"


def test_count_tokens(gateway):
    counted = sdk_run(gateway, lambda c: c.messages.count_tokens(model=MODEL, messages=ask("count these")))
    assert counted.input_tokens > 0


def test_a_stream_that_cannot_go_on_ends_with_an_error_event(gateway, providers):
    for fake in providers:
        fake.misbehave("*", Behaviour(error_after=1, content_prefix="other: "))

    async def work(client):
        async with client.messages.stream(model=MODEL, max_tokens=64, messages=ask("broken")) as stream:
            async for _ in stream:
                pass

    with pytest.raises(anthropic.APIStatusError) as raised:
        sdk_run(gateway, work)
    assert raised.value.body["type"] == "error"
    assert raised.value.body["error"]["type"] == "api_error"


def test_every_endpoint_open_answers_529_overloaded_with_retry_after(gateway, providers):
    Upstream.objects.filter(name="llm").update(breaker_probe_interval=30)  # no probe on a slow machine
    reset_clients()
    for name in ("llm/primary", "llm/fallback"):
        breaker = SharedBreaker(name, fail_max=1, reset_timeout=30)
        breaker.record_failure(breaker.admit(), RuntimeError("down"))
    with pytest.raises(anthropic.APIStatusError) as raised:
        sdk_run(gateway, lambda c: c.messages.create(model=MODEL, max_tokens=8, messages=ask("x")))
    assert raised.value.status_code == 529
    assert raised.value.body["error"]["type"] == "overloaded_error"
    assert int(raised.value.response.headers["retry-after"]) >= 1


def test_no_endpoint_room_before_the_deadline_answers_529_overloaded_with_retry_after(gateway, providers):
    Upstream.objects.filter(name="llm").update(deadline=0.5)
    Endpoint.objects.update(rpm_limit=1)
    reset_clients()

    def create(client):
        return client.messages.create(model=MODEL, max_tokens=8, messages=ask("x"))

    sdk_run(gateway, create)
    sdk_run(gateway, create)  # each endpoint's one request of the minute
    with pytest.raises(anthropic.APIStatusError) as raised:
        sdk_run(gateway, create)
    assert raised.value.status_code == 529
    assert raised.value.body["error"]["type"] == "overloaded_error"
    assert int(raised.value.response.headers["retry-after"]) >= 1
    assert [p.chat_calls for p in providers] == [1, 1]


def test_a_full_bulkhead_answers_529_overloaded_with_retry_after(gateway, providers):
    primary, _ = providers
    Upstream.objects.filter(name="llm").update(bulkhead_max=1, bulkhead_wait=0)
    reset_clients()
    primary.fail_next(Reply(200, delay=1.0))  # whichever call goes out first holds the one slot

    async def work(client):
        calls = [client.messages.create(model=MODEL, max_tokens=8, messages=ask(f"x{i}")) for i in range(2)]
        return await asyncio.gather(*calls, return_exceptions=True)

    answers = sdk_run(gateway, work)
    refused = [a for a in answers if isinstance(a, anthropic.APIStatusError)]
    assert len(refused) == 1 and len([a for a in answers if not isinstance(a, Exception)]) == 1
    assert refused[0].status_code == 529 and refused[0].body["error"]["type"] == "overloaded_error"
    assert int(refused[0].response.headers["retry-after"]) >= 1


def test_errors_come_in_anthropics_shape(gateway, providers, settings):
    primary, _ = providers
    with pytest.raises(anthropic.AuthenticationError) as raised:
        sdk_run("wrong-key", lambda c: c.messages.create(model=MODEL, max_tokens=8, messages=ask("x")))
    assert raised.value.body["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.NotFoundError) as raised:
        sdk_run(gateway, lambda c: c.messages.create(model="nope", max_tokens=8, messages=ask("x")))
    assert raised.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as raised:
        sdk_run(gateway, lambda c: c.messages.create(model=MODEL, max_tokens=8, messages=[
            {"role": "user", "content": [{"type": "video"}]}]))
    assert raised.value.body["error"]["type"] == "invalid_request_error"
    assert "messages.0.content.0.type" in raised.value.body["error"]["message"]
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 200
    with pytest.raises(anthropic.APIStatusError) as raised:
        sdk_run(gateway, lambda c: c.messages.create(model=MODEL, max_tokens=8, messages=ask("x" * 300)))
    assert raised.value.status_code == 413 and raised.value.body["error"]["type"] == "request_too_large"
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2_621_440
    primary.fail_next(Reply(400, body={"error": {"message": "bad things", "type": "invalid_request_error"}}))
    with pytest.raises(anthropic.BadRequestError) as raised:
        sdk_run(gateway, lambda c: c.messages.create(model=MODEL, max_tokens=8, messages=ask("x")))
    assert raised.value.body == {"type": "error", "error": {"type": "invalid_request_error",
                                                            "message": "bad things"}}


def test_throttled_callers_get_429_rate_limit_error_with_retry_after(gateway, settings):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"generate": "1/min"}}

    async def work(client):
        await client.messages.create(model=MODEL, max_tokens=8, messages=ask("one"))
        await client.messages.create(model=MODEL, max_tokens=8, messages=ask("two"))

    with pytest.raises(anthropic.RateLimitError) as raised:
        sdk_run(gateway, work)
    assert raised.value.body["error"]["type"] == "rate_limit_error"
    assert int(raised.value.response.headers["retry-after"]) >= 1


def test_unknown_paths_under_messages_answer_a_json_404_in_anthropics_shape(gateway, client):
    response = client.post("/v1/messages/batches/nope", HTTP_X_API_KEY=gateway)
    assert response.status_code == 404
    assert response.json()["type"] == "error" and response.json()["error"]["type"] == "not_found_error"
    assert client.get("/v1/nothing").json()["error"]["code"] == "unknown_url"  # OpenAI's shape elsewhere


def test_a_long_silence_gets_pings_and_the_answer_still_comes_whole(gateway, providers, settings):
    from project.asgi import application

    settings.AIGEN = {**settings.AIGEN, "MESSAGES_PING_INTERVAL": 0.02}
    providers[0].misbehave("*", Behaviour(first_token_delay=0.2), times=1)

    async def go():
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            body = {"model": MODEL, "max_tokens": 8, "stream": True, "messages": ask("slow")}
            response = await http.post("/v1/messages", json=body, headers={"x-api-key": gateway})
            assert response.status_code == 200, response.text
            return response.text

    names = [line.removeprefix("event: ") for line in async_to_sync(go)().splitlines()
             if line.startswith("event: ")]
    assert names[:2] == ["message_start", "ping"]  # Anthropic's order, before the first text
    assert names[-1] == "message_stop" and "content_block_delta" in names


def test_a_session_post_without_its_csrf_token_is_403_permission_error(gateway):
    from django.test import Client

    browser = Client(enforce_csrf_checks=True)
    browser.force_login(get_user_model().objects.get(username="caller"))
    response = browser.post("/v1/messages", data={"model": MODEL, "max_tokens": 8, "messages": ask("x")},
                            content_type="application/json", HTTP_ANTHROPIC_VERSION="2023-06-01")
    assert response.status_code == 403
    assert response.json()["error"]["type"] == "permission_error"
    assert response["anthropic-version"] == "2023-06-01"


def test_a_prompt_too_long_for_the_model_goes_to_the_policys_fallback_model(gateway, providers):
    primary, _ = providers
    Upstream.objects.filter(name="llm").update(context_fallback_model="big-model")
    reset_clients()
    primary.misbehave(MODEL, Behaviour(error_code="context_length_exceeded"))
    answer = sdk_run(gateway, lambda c: c.messages.create(model=MODEL, max_tokens=8, messages=ask("long")))
    assert answer.content[0].text == CONTENT_PREFIX + "long"
    assert [body["model"] for body in primary.chat_requests()] == [MODEL, "big-model"]


RAW_MESSAGE = ('{"id":"msg_raw","type":"message","role":"assistant","model":"claude-raw",'
               '"content":[{"type":"text","text":"h\u00e9llo \u2014 \\u00e9 kept as sent"}],'
               '"stop_reason":"end_turn","stop_sequence":null,'
               '"usage":{"input_tokens":7,"output_tokens":5},"x_provider_field":{"kept":true}}').encode()


@pytest.fixture
def raw_claude(transactional_db, fake, settings) -> str:
    """An upstream serving "claude-raw" from the scriptable fake as an
    Anthropic-format endpoint (no translation); a caller's API key."""
    settings.AIGEN = {**settings.AIGEN, "GENERATE_THROTTLE": "100000/min"}
    row = Upstream.objects.create(name="raw", base_url=f"{fake.url}/v1", served_models=["claude-raw"],
                                  retry_total=0)
    Endpoint.objects.create(upstream=row, name="claude", base_url=f"{fake.url}/v1", wire_format="anthropic")
    reset_clients()
    openai_views.models.clear()
    token_users.clear()
    return token_issue(user=get_user_model().objects.create_user("raw-caller"))


def test_a_plain_answer_goes_out_as_the_provider_sent_it_and_is_billed_from_the_one_parse(raw_claude, fake):
    """An Anthropic-format endpoint's answer is relayed byte for byte (UTF-8
    text, escapes, compact separators, fields the gateway does not know), not
    re-encoded; its usage, from the parse that checked it is JSON, is billed."""
    fake.script("/v1/messages", Reply(200, body=RAW_MESSAGE, headers={"Content-Type": "application/json"}),
                method="POST")
    from project.asgi import application

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=application),
                                     base_url="http://testserver") as http:
            return await http.post("/v1/messages", headers={"x-api-key": raw_claude}, json={
                "model": "claude-raw", "max_tokens": 16, "messages": ask("hello")})

    answered = async_to_sync(go)()
    assert answered.status_code == 200, answered.text
    assert answered.content == RAW_MESSAGE
    assert answered.headers["content-type"] == "application/json"
    usage_flush()
    billed = UsageLedger.objects.get(user__username="raw-caller")
    assert (billed.calls, billed.prompt_tokens, billed.completion_tokens) == (1, 7, 5)


def test_a_200_that_is_a_json_array_is_the_providers_failure(raw_claude, fake):

    fake.script("/v1/messages", Reply(200, body=[1, 2]), method="POST")

    with pytest.raises(anthropic.InternalServerError) as raised:
        sdk_run(raw_claude, lambda c: c.messages.create(model="claude-raw", max_tokens=8, messages=ask("hi")))
    assert raised.value.status_code == 502
    assert raised.value.body["error"]["message"] == "the provider's answer is not a JSON object"


def test_pings_come_only_in_silences_and_a_failure_after_the_items_that_preceded_it():
    from aigen.edge.messages import _with_pings

    closed = asyncio.Event()

    async def provider(pauses, failure=None):
        try:
            for index, pause in enumerate(pauses):
                await asyncio.sleep(pause)
                yield index
            if failure is not None:
                raise failure
        finally:
            closed.set()

    async def relayed(pauses, failure=None, take=None):
        got = []
        async with contextlib.aclosing(_with_pings(provider(pauses, failure), 0.05)) as items:
            async for item in items:
                got.append(item)
                if take is not None and len([i for i in got if i is not None]) == take:
                    break
        return got

    # Items close together: no ping; a silence of three intervals: pings before the next item.
    got = asyncio.run(relayed([0, 0, 0.17, 0]))
    assert [i for i in got if i is not None] == [0, 1, 2, 3] and got[:2] == [0, 1]
    assert 2 <= got.count(None) <= 4 and got.index(2) > 2
    with pytest.raises(ValueError, match="cut"):
        asyncio.run(relayed([0, 0], ValueError("cut")))
    closed.clear()
    assert asyncio.run(relayed([0, 10, 10], take=1)) == [0]  # the caller left: the reader is stopped
    assert closed.is_set()
