"""Caller limits at the three doors (aigen.edge.metering): past an API token's
requests per minute or token budget, /v1/chat/completions answers 429 in
OpenAI's shape, /v1/messages in Anthropic's (`rate_limit_error`), /api/ai/*
in ours, each with Retry-After; the provider is not called. Every answered
call lands in the usage ledger with the provider's usage. Real SDKs, the
project's ASGI application, fake providers on loopback."""
from __future__ import annotations

from decimal import Decimal

import anthropic
import httpx
import httpx2
import openai
import pytest
import redis
from asgiref.sync import async_to_sync
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from aigen.edge import openai as openai_views
from aigen.edge.tokens import token_issue
from aigen.edge.tokens import users as token_users
from aigen.generation.ledger import usage_buffer, usage_flush
from aigen.models import ApiToken, ModelPrice, UsageLedger
from resilience.cache import reset_engines
from resilience.client import reset_clients
from resilience.models import Upstream
from tests.support.fake_openai import FakeOpenAI
from tests.support.fake_upstream import Reply

MODEL = "gpt-metered"


@pytest.fixture
def provider():
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def caller(transactional_db, provider, settings):
    """An `llm` upstream serving MODEL from the fake; the caller's token. Committed data: the
    ASGI application reads it from its own threads (as on PostgreSQL it must)."""
    settings.RESILIENCE = {**settings.RESILIENCE, "SECRETS": {"UPSTREAM_KEY": "sk-upstream"}}
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK,
                               "DEFAULT_THROTTLE_RATES": {"generate": "100000/min"}}
    Upstream.objects.create(name="llm", base_url=provider.url, served_models=[MODEL], auth_kind="bearer",
                            auth_env_var="UPSTREAM_KEY", read_timeout=5, deadline=10, retry_total=0,
                            log_sample_rate=1.0)
    reset_clients()
    openai_views.models.clear()
    token_users.clear()
    usage_buffer.discard()  # an earlier test's usage, not yet written, is not this test's
    user = get_user_model().objects.create_user("caller")
    return token_issue(user=user)


def limit(**fields) -> None:
    """Set the caller's token limits (as the admin does: a save)."""
    token = ApiToken.objects.get(user__username="caller")
    for name, value in fields.items():
        setattr(token, name, value)
    token.save()


def run_openai(key: str, work):
    from project.asgi import application

    async def go():
        transport = httpx2.ASGITransport(app=application)
        async with httpx2.AsyncClient(transport=transport, base_url="http://testserver") as http:
            return await work(openai.AsyncOpenAI(api_key=key, base_url="http://testserver/v1",
                                                 http_client=http, max_retries=0))

    return async_to_sync(go)()


def run_anthropic(key: str, work):
    from project.asgi import application

    async def go():
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            return await work(anthropic.AsyncAnthropic(api_key=key, base_url="http://testserver",
                                                       http_client=http, max_retries=0))

    return async_to_sync(go)()


def chat(client, text: str = "hello", **options):
    return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": text}],
                                          **options)


def test_past_its_rpm_the_openai_door_answers_429_in_openais_shape_with_retry_after(caller, provider):
    limit(rpm_limit=2)

    async def work(client):
        await chat(client)
        await chat(client)
        await chat(client)

    with pytest.raises(openai.RateLimitError) as raised:
        run_openai(caller, work)
    assert raised.value.status_code == 429
    assert raised.value.body["code"] == "rate_limit_exceeded" and raised.value.body["type"] == "requests"
    assert 59 <= int(raised.value.response.headers["Retry-After"]) <= 60  # the first call leaves the window
    assert provider.chat_calls == 2  # the refused call never reached it


def test_past_its_budget_the_openai_door_answers_insufficient_quota_until_the_period_ends(caller, provider):
    limit(token_budget=50)
    run_openai(caller, lambda client: chat(client, "x" * 200, max_tokens=10))  # ~2x50 tokens: spent

    with pytest.raises(openai.RateLimitError) as raised:
        run_openai(caller, lambda client: chat(client))
    assert raised.value.body["code"] == "insufficient_quota"
    assert int(raised.value.response.headers["Retry-After"]) > 1  # until the UTC day ends
    assert provider.chat_calls == 1


def test_past_its_rpm_the_messages_door_answers_rate_limit_error_with_retry_after(caller, provider):
    limit(rpm_limit=1)

    async def work(client):
        for text in ("one", "two"):
            await client.messages.create(model=MODEL, max_tokens=8,
                                         messages=[{"role": "user", "content": text}])

    with pytest.raises(anthropic.RateLimitError) as raised:
        run_anthropic(caller, work)
    assert raised.value.body == {"type": "error", "error": {
        "type": "rate_limit_error",
        "message": "Rate limit reached: 1 requests per minute for this API token."}}
    assert int(raised.value.response.headers["retry-after"]) >= 59
    assert provider.chat_calls == 1


def test_past_its_rpm_the_generate_api_answers_429_in_the_shared_shape(caller, db, section2_data):
    limit(rpm_limit=1)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {caller}")
    body = {"template_id": "emergency_plan", "section_id": "2", "data": section2_data}
    assert client.post("/api/ai/generate", body, format="json").status_code == 200  # the mock provider
    refused = client.post("/api/ai/generate", body, format="json")
    assert refused.status_code == 429 and int(refused["Retry-After"]) >= 59
    assert refused.json()["success"] is False
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"


def test_answered_calls_land_in_the_ledger_with_the_providers_usage_and_cost(caller, provider):
    ModelPrice.objects.create(model=MODEL, input=Decimal("2"), cached_input=Decimal("1"), output=Decimal("8"))

    async def work(client):
        await chat(client, "plain")
        stream = await chat(client, "streamed", stream=True, stream_options={"include_usage": True})
        asked = [chunk.usage async for chunk in stream]
        stream = await chat(client, "streamed, no usage asked", stream=True)
        unasked = [chunk async for chunk in stream]
        return asked, unasked

    asked, unasked = run_openai(caller, work)
    assert asked[-1] is not None  # the caller asked for the usage chunk: it gets it
    assert all(chunk.choices for chunk in unasked)  # asked of the provider for the ledger, not relayed
    run_anthropic(caller, lambda client: client.messages.create(
        model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "anthropic"}]))
    usage_flush()
    row = UsageLedger.objects.get(user__username="caller", model=MODEL)
    served = provider.served_usage()
    assert row.calls == 4 == len(served)
    assert all(body["stream_options"] == {"include_usage": True} for body in provider.chat_requests()[1:3])
    assert row.prompt_tokens == sum(u["prompt_tokens"] for u in served)
    assert row.completion_tokens == sum(u["completion_tokens"] for u in served)
    assert row.cost == (Decimal(2) * row.prompt_tokens + Decimal(8) * row.completion_tokens) / 1_000_000


def test_a_refused_or_failed_call_is_not_billed(caller, provider):
    limit(rpm_limit=1)

    async def work(client):
        await chat(client)
        with pytest.raises(openai.RateLimitError):
            await chat(client)

    run_openai(caller, work)
    usage_flush()
    assert UsageLedger.objects.get().calls == 1


@pytest.fixture
def private_redis(redis_process, settings):
    """The default cache on a private redis-server, whose command counts are this test's alone."""
    settings.CACHES = {"default": {"BACKEND": "resilience.cache.FallbackCache",
                                   "LOCATION": redis_process.url}}
    reset_engines()
    reset_clients()
    yield redis_process
    reset_engines()


def commands(url: str) -> dict[str, int]:
    stats = redis.Redis.from_url(url).info("commandstats")
    return {name.removeprefix("cmdstat_"): row["calls"] for name, row in stats.items()}


@pytest.mark.parametrize("limited", [False, True])
def test_a_limited_callers_door_throttle_is_counted_by_its_admission_in_one_round_trip(
        caller, provider, private_redis, settings, limited):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"generate": "2/min"}}
    if limited:
        limit(rpm_limit=100)  # its own limit is far: the door's throttle refuses first

    async def work(client):
        await chat(client)  # the token is loaded, the script cached
        before = commands(private_redis.url)
        await chat(client)
        after = commands(private_redis.url)
        with pytest.raises(openai.RateLimitError) as raised:
            await chat(client)
        counted = ("incrby", "evalsha", "incr")  # the throttle's INCRBY; the script, and its INCR inside
        return {name: after.get(name, 0) - before.get(name, 0) for name in counted}, raised.value

    sent, refused = run_openai(caller, work)
    # Before the call, one round trip either way: the throttle's pipeline, or the script that counts it.
    expected = {"incrby": 0, "evalsha": 1, "incr": 1} if limited else {"incrby": 1, "evalsha": 0, "incr": 0}
    assert sent == expected
    assert refused.body["message"] == "Rate limit reached for the gateway."
    assert int(refused.response.headers["Retry-After"]) >= 1
    assert provider.chat_calls == 2


@pytest.mark.parametrize("door", ["openai", "messages"])
def test_a_200_that_is_not_json_is_refused_with_502_and_not_billed(caller, provider, door):
    """The door parses the answer once, before settling: a 200 that is not JSON
    is the provider's failure (502 `provider_error`), and the caller pays nothing
    for it: no ledger row, and a budget's reservation is freed, not spent."""
    limit(token_budget=10_000)
    provider.fail_next(Reply(200, body=b"<html>upstream proxy page</html>",
                             headers={"Content-Type": "application/json"}))
    if door == "openai":
        with pytest.raises(openai.InternalServerError) as raised:
            run_openai(caller, lambda client: chat(client))
    else:
        with pytest.raises(anthropic.InternalServerError) as raised:
            run_anthropic(caller, lambda client: client.messages.create(
                model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "hello"}]))
    assert raised.value.status_code == 502
    assert provider.chat_calls == 1
    usage_flush()
    assert not UsageLedger.objects.exists()
    run_openai(caller, lambda client: chat(client))  # then a good answer: billed with its usage
    usage_flush()
    row = UsageLedger.objects.get()
    assert row.calls == 1 and row.prompt_tokens == provider.served_usage()[-1]["prompt_tokens"]


@pytest.mark.django_db
def test_a_stream_read_in_part_is_billed_when_the_request_ends_before_its_generator():
    """The ASGI handler closes what a request left open (`open_streams`) when the request ends;
    a caller gone after the usage chunk can make that come before the stream generator's own
    settle. The request's end then settles by the generator's rule: billed, not freed."""
    from types import SimpleNamespace

    from aigen.edge.metering import spend_left_unread, stream_settle
    from aigen.generation.spend import Spend
    from resilience.client.context import open_streams

    read = get_user_model().objects.create_user("read-then-gone")
    unread = get_user_model().objects.create_user("gone-before-any")
    usage = {"prompt_tokens": 101, "completion_tokens": 103, "total_tokens": 204}

    async def request_end(user, stream) -> None:
        held: set = set()
        token = open_streams.set(held)
        spend = Spend(user_id=user.pk, model="gpt-read")
        spend_left_unread(lambda: stream_settle(spend, stream))
        open_streams.reset(token)
        for left in held:  # as GatewayASGIHandler.handle does at the request's end
            await left.aclose()
        assert spend.done

    async_to_sync(request_end)(read, SimpleNamespace(events_read=3, usage=usage))
    async_to_sync(request_end)(unread, SimpleNamespace(events_read=0, usage=None))
    usage_flush()
    row = UsageLedger.objects.get(user=read)
    assert (row.calls, row.prompt_tokens, row.completion_tokens) == (1, 101, 103)
    assert not UsageLedger.objects.filter(user=unread).exists()  # nothing read: freed, unbilled
