"""Plain Messages calls through the response cache and single-flight, as the
upstream's policy says (`cache_ttl`, `cache_methods` with POST,
`single_flight`), exactly as plain chat-completions calls: the real
anthropic and openai SDKs call the project's ASGI application, a fake
OpenAI-compatible provider on loopback counts what reaches it. The key is
the call in its own format (every field that changes the answer, the
`anthropic-version` it asks for), never the caller's token."""
from __future__ import annotations

import asyncio

import anthropic
import httpx
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
from tests.support.fake_openai import CONTENT_PREFIX, FakeOpenAI
from tests.support.fake_upstream import Reply

MODEL = "claude-cached"


@pytest.fixture
def cached(transactional_db, settings):
    """An upstream serving MODEL from one OpenAI-format provider, caching POSTs for a minute;
    two callers with tokens of their own."""
    settings.RESILIENCE = {**settings.RESILIENCE, "SECRETS": {"UPSTREAM_CACHED_KEY": "sk-cached"}}
    settings.AIGEN = {**settings.AIGEN, "GENERATE_THROTTLE": "100000/min"}
    with FakeOpenAI() as provider:
        row = Upstream(name="cached", base_url=provider.url, served_models=[MODEL], auth_kind="bearer",
                       auth_env_var="UPSTREAM_CACHED_KEY", read_timeout=5, deadline=10, retry_total=0,
                       cache_ttl=60, cache_methods=["POST"], single_flight=True, log_sample_rate=1.0)
        row.full_clean()
        row.save()
        Endpoint.objects.create(upstream=row, name="only", base_url=provider.url)
        reset_clients()
        openai_views.models.clear()
        token_users.clear()
        users = get_user_model().objects
        tokens = (token_issue(user=users.create_user("alice")), token_issue(user=users.create_user("bob")))
        yield tokens, provider


def run(work):
    from project.asgi import application

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=application),
                                     base_url="http://testserver") as http:
            return await work(http)

    return async_to_sync(go)()


def claude(token, http, **options):
    return anthropic.AsyncAnthropic(api_key=token, base_url="http://testserver", http_client=http,
                                    max_retries=0, **options)


def create(client, text="hello", **fields):
    return client.messages.create(model=MODEL, max_tokens=32, messages=[{"role": "user", "content": text}],
                                  **fields)


def test_two_identical_calls_make_one_provider_call_whoever_makes_them(cached):
    (alice, bob), provider = cached

    async def work(http):
        first = await create(claude(alice, http))
        second = await create(claude(bob, http))  # another caller, another token: the same answer
        return first, second

    first, second = run(work)
    assert provider.chat_calls == 1
    assert first.model_dump() == second.model_dump()
    assert first.content[0].text == CONTENT_PREFIX + "hello" and first.stop_reason == "end_turn"
    call_log_flush()
    assert CallLog.objects.filter(upstream="cached", cache_hit=True).count() == 1


def test_concurrent_identical_calls_make_one_provider_call(cached):
    (alice, bob), provider = cached
    provider.fail_next(Reply(200, delay=1.0))  # the one call that goes out is slow: the others wait for it

    async def work(http):
        return await asyncio.gather(*(create(claude(token, http), "together")
                                      for token in (alice, bob) * 4))

    answers = run(work)
    assert provider.chat_calls == 1
    assert {answer.content[0].text for answer in answers} == {CONTENT_PREFIX + "together"}


@pytest.mark.parametrize("field", [{"temperature": 0.5}, {"max_tokens": 33}, {"system": "Be brief."},
                                   {"stop_sequences": ["END"]}, {"text": "other"}])
def test_a_call_that_differs_in_any_field_is_a_miss(cached, field):
    (alice, _), provider = cached
    varied = dict(field)
    text = varied.pop("text", "hello")
    max_tokens = varied.pop("max_tokens", 32)

    async def work(http):
        client = claude(alice, http)
        await create(client)
        await client.messages.create(model=MODEL, max_tokens=max_tokens,
                                     messages=[{"role": "user", "content": text}], **varied)
        await create(client)  # the first again: a hit

    run(work)
    assert provider.chat_calls == 2


def test_another_anthropic_version_is_a_miss(cached):
    (alice, _), provider = cached

    async def work(http):
        await create(claude(alice, http))
        await create(claude(alice, http, default_headers={"anthropic-version": "2099-01-01"}))

    run(work)
    assert provider.chat_calls == 2


def test_streams_and_error_answers_are_never_cached(cached):
    (alice, _), provider = cached
    provider.fail_next(Reply(500))

    async def work(http):
        client = claude(alice, http)
        with pytest.raises(anthropic.InternalServerError):
            await create(client)
        for _ in range(2):
            async with client.messages.stream(model=MODEL, max_tokens=32,
                                              messages=[{"role": "user", "content": "hello"}]) as stream:
                await stream.get_final_message()
        return await create(client)

    assert run(work).content[0].text == CONTENT_PREFIX + "hello"
    assert provider.chat_calls == 4  # the 500, two streams, then the plain call (not the 500's)


def test_chat_completions_are_cached_the_same_way_and_apart_from_messages(cached):
    (alice, bob), provider = cached

    async def work(http):
        async with httpx.AsyncClient(transport=http._transport, base_url="http://testserver/v1") as http2:
            chats = [openai.AsyncOpenAI(api_key=token, base_url="http://testserver/v1", http_client=http2,
                                        max_retries=0) for token in (alice, bob)]
            answers = [await chat.chat.completions.create(model=MODEL, max_tokens=32,
                                                          messages=[{"role": "user", "content": "hello"}])
                       for chat in chats]
        message = await create(claude(alice, http))
        return answers, message

    answers, message = run(work)
    assert answers[0].choices[0].message.content == CONTENT_PREFIX + "hello" == message.content[0].text
    assert answers[0].model_dump() == answers[1].model_dump()
    assert provider.chat_calls == 2  # one per front door: the keys differ by format
