"""The OpenAI-compatible front door (/v1/chat/completions, /v1/models) with
the real openai SDK as the caller: the project's ASGI application behind
httpx2's ASGI transport, fake OpenAI-compatible providers on loopback as the
upstream's endpoints."""
from __future__ import annotations

import json

import httpx2
import openai
import pytest
from asgiref.sync import async_to_sync

from resilience.client import reset_clients
from resilience.client.breaker import SharedBreaker
from resilience.models import CallLog, Endpoint, Upstream
from resilience.telemetry.calllog import call_log_flush
from tests.support.fake_openai import CONTENT_PREFIX
from tests.support.fake_upstream import FakeUpstream, Reply

MODEL = "gpt-gateway"


@pytest.fixture
def gateway(db, llm_gateway):
    """An `llm` upstream serving MODEL from two providers (priority: primary,
    then a fallback that names the model its own way)."""
    return llm_gateway([MODEL])


def sdk_run(key: str, work):
    """Run `await work(client)` with an AsyncOpenAI client whose HTTP goes
    into the project's ASGI application."""
    from project.asgi import application

    async def go():
        transport = httpx2.ASGITransport(app=application)
        async with httpx2.AsyncClient(transport=transport, base_url="http://testserver") as http:
            client = openai.AsyncOpenAI(api_key=key, base_url="http://testserver/v1", http_client=http,
                                        max_retries=0)
            return await work(client)

    return async_to_sync(go)()


def ask(text: str):
    return [{"role": "user", "content": text}]


def test_a_completion_goes_to_the_primary_with_its_own_key(gateway, providers):
    primary, fallback = providers
    answer = sdk_run(gateway, lambda c: c.chat.completions.create(model=MODEL, messages=ask("hello")))
    assert answer.choices[0].message.content == CONTENT_PREFIX + "hello"
    assert primary.chat_calls == 1 and fallback.chat_calls == 0
    sent = primary.requests[-1]
    assert sent.headers["Authorization"] == "Bearer sk-primary"  # never the caller's gateway token
    assert gateway not in json.dumps(dict(sent.headers))


def test_the_callers_bytes_reach_the_provider_as_they_came(gateway, providers):
    # Issue 30: parsed once at the door, never re-encoded on the way (key order,
    # spacing, escapes and fields the gateway does not know stay the caller's).
    primary, _ = providers
    raw = ('{"messages": [{"content": "caf\\u00e9",  "role": "user"}], "x_extra": {"b": 1, "a": 2},'
           f' "model": "{MODEL}"}}').encode()

    async def send(client):
        return await client._client.post("http://testserver/v1/chat/completions", content=raw,
                                         headers={"Authorization": f"Bearer {gateway}",
                                                  "Content-Type": "application/json"})

    response = sdk_run(gateway, send)
    assert response.status_code == 200
    assert primary.requests[-1].body == raw
    assert response.json()["choices"][0]["message"]["content"] == CONTENT_PREFIX + "caf\u00e9"


def test_a_failing_primary_fails_over_to_the_fallback_with_its_model_name(gateway, providers):
    primary, fallback = providers
    primary.fail_next(Reply(503), Reply(503), Reply(503))
    answer = sdk_run(gateway, lambda c: c.chat.completions.create(model=MODEL, messages=ask("again")))
    assert answer.choices[0].message.content == CONTENT_PREFIX + "again"
    assert answer.model == "fallback-model"
    assert fallback.chat_requests()[-1]["model"] == "fallback-model"
    assert fallback.requests[-1].headers["Authorization"] == "Bearer sk-fallback"
    call_log_flush()
    log = CallLog.objects.get(upstream="llm")
    # The primary's 503 is retried once there, then the fallback answers.
    assert log.endpoint == "fallback" and [r["endpoint"] for r in log.retries] == ["primary", "primary"]


def test_a_stream_passes_through_and_fails_over_before_its_first_byte(gateway, providers):
    primary, fallback = providers
    primary.fail_next(Reply(502), Reply(502))  # retried once on the primary, then the fallback

    async def work(client):
        stream = await client.chat.completions.create(model=MODEL, messages=ask("streamed"), stream=True)
        return "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])

    assert sdk_run(gateway, work) == CONTENT_PREFIX + "streamed"
    assert primary.chat_calls == 2 and fallback.chat_calls == 1


def test_a_stream_cut_after_its_first_byte_ends_with_an_error_event_when_it_cannot_go_on(gateway, db):
    with FakeUpstream() as cut:
        first = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": MODEL,
                 "choices": [{"index": 0, "delta": {"content": "par"}, "finish_reason": None}]}
        cut.script("/v1/chat/completions", Reply(200, headers={"Content-Type": "text/event-stream"},
                                                 chunks=(f"data: {json.dumps(first)}\n\n".encode(),)))
        Endpoint.objects.filter(name="primary").update(base_url=cut.url + "/v1")
        Endpoint.objects.filter(name="fallback").update(enabled=False)  # nowhere to continue
        Upstream.objects.filter(name="llm").update(base_url=cut.url + "/v1", retry_total=0)
        reset_clients()
        received = []

        async def work(client):
            stream = await client.chat.completions.create(model=MODEL, messages=ask("x"), stream=True)
            async for chunk in stream:
                received.append(chunk.choices[0].delta.content)

        with pytest.raises(openai.APIError) as caught:
            sdk_run(gateway, work)
    assert received == ["par"]  # what came, then the error: never a silent truncation
    assert "stream cut after 1 events" in caught.value.message


def test_every_endpoint_open_answers_503_in_openai_shape_with_retry_after(gateway, providers):
    for name in ("llm/primary", "llm/fallback"):
        breaker = SharedBreaker(name, fail_max=1, reset_timeout=30)
        breaker.record_failure(breaker.admit(), RuntimeError("down"))

    async def work(client):
        return await client.chat.completions.with_raw_response.create(model=MODEL, messages=ask("x"))

    with pytest.raises(openai.InternalServerError) as caught:
        sdk_run(gateway, work)
    err = caught.value
    assert err.status_code == 503 and 1 <= int(err.response.headers["Retry-After"]) <= 30
    assert err.body["code"] == "breaker_open" and err.body["type"] == "server_error"
    assert providers[0].chat_calls == 0 and providers[1].chat_calls == 0


def test_a_provider_error_comes_back_in_its_own_openai_shape(gateway, providers):
    primary, _ = providers
    primary.fail_next(Reply(400))  # not retried: the caller's request was at fault
    with pytest.raises(openai.BadRequestError) as caught:
        sdk_run(gateway, lambda c: c.chat.completions.create(model=MODEL, messages=ask("x")))
    assert caught.value.body["message"] == "Fake failure 400"
    assert providers[1].chat_calls == 0


def test_unknown_models_and_bad_bodies_are_refused_in_openai_shape(gateway):
    with pytest.raises(openai.NotFoundError) as caught:
        sdk_run(gateway, lambda c: c.chat.completions.create(model="nope", messages=ask("x")))
    assert caught.value.body["code"] == "model_not_found" and caught.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as caught:
        sdk_run(gateway, lambda c: c.chat.completions.create(model=MODEL, messages=[]))
    assert caught.value.body["param"] == "messages"


def test_a_bad_or_missing_token_is_refused(gateway):
    with pytest.raises(openai.AuthenticationError) as caught:
        sdk_run("not-a-token", lambda c: c.chat.completions.create(model=MODEL, messages=ask("x")))
    assert caught.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        sdk_run("not-a-token", lambda c: c.models.list())


def test_models_lists_what_the_upstreams_serve(gateway):
    async def work(client):
        return [model.id async for model in client.models.list()]

    assert sdk_run(gateway, work) == [MODEL]


def test_the_model_map_is_reread_ahead_on_the_loop(transactional_db, settings):
    """resilience.client.ahead: a request in the last quarter of POLICY_CHECK_INTERVAL starts the
    /v1 model map's query in a thread and goes on with the map it has; the query brings a model
    another worker's upstream began serving."""
    import asyncio

    from aigen.edge import openai as openai_views

    settings.RESILIENCE = {**settings.RESILIENCE, "POLICY_CHECK_INTERVAL": 60}
    Upstream.objects.create(name="first", base_url="https://first.example/v1", served_models=["m-one"])
    openai_views.models.clear()

    async def run() -> list[set[str]]:
        seen = [set(await openai_views.models.get())]
        await asyncio.to_thread(lambda: Upstream.objects.create(
            name="second", base_url="https://second.example/v1", served_models=["m-two"]))
        seen.append(set(await openai_views.models.get()))  # early in the interval: as it was
        openai_views.models._read_at -= 50  # 50 of 60 s: in the last quarter
        seen.append(set(await openai_views.models.get()))  # goes on with it; the query started
        for _ in range(500):
            if "m-two" in await openai_views.models.get():
                break
            await asyncio.sleep(0.01)
        seen.append(set(await openai_views.models.get()))
        return seen

    try:
        assert async_to_sync(run)() == [{"m-one"}, {"m-one"}, {"m-one"}, {"m-one", "m-two"}]
    finally:
        openai_views.models.clear()
