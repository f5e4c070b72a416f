"""The Messages front door's whole surface through the real anthropic SDK
against the production server (gunicorn + two uvicorn workers, as `make serve`
runs them, with Redis), translated to a loopback OpenAI-format provider:
create, `messages.stream`, tool use with streamed arguments and the result
going back, count_tokens, and every error in Anthropic's shape (400 naming
the field, 401, 403, 404, 413, 429 with retry-after, 500, 529 with
retry-after, and `event: error` when a stream breaks). The in-process tests
(test_messages.py) hold the same on the ASGI application alone."""
from __future__ import annotations

import re
import secrets

import anthropic
import pytest
import requests

from tests.support.fake_openai import CONTENT_PREFIX, Behaviour, FakeOpenAI
from tests.support.fake_upstream import Reply
from tests.support.live_server import LiveServer

MODEL = "claude-served"
BRITTLE = "claude-brittle"  # an upstream whose breaker opens at its first failure
LIMIT = 20_000  # MAX_REQUEST_BYTES: the door's body limit
TOOL = {"name": "echo", "description": "Echo the text.",
        "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}}


@pytest.fixture(scope="module")
def served(tmp_path_factory, redis_url):
    with FakeOpenAI() as provider, FakeOpenAI() as brittle:
        common = "read_timeout=5, deadline=10, retry_total=0, log_sample_rate=1.0"
        setup = (
            "from django.contrib.auth import get_user_model\n"
            "from resilience.models import Upstream\n"
            f"Upstream.objects.create(name='llm', base_url={provider.url!r}, served_models=[{MODEL!r}],"
            f" breaker_enabled=False, {common})\n"
            f"Upstream.objects.create(name='brittle', base_url={brittle.url!r}, served_models=[{BRITTLE!r}],"
            f" breaker_fail_max=1, breaker_reset_timeout=60, breaker_probe_interval=60, {common})\n"
            "get_user_model().objects.create_superuser('staff', email='', password='staff-pass')\n")
        env = {"REDIS_URL": redis_url, "CACHE_KEY_PREFIX": f"served{secrets.token_hex(4)}",
               "AI_GENERATE_THROTTLE": "100000/min", "MAX_REQUEST_BYTES": str(LIMIT)}
        with LiveServer(tmp_path_factory.mktemp("served"), env=env, workers=2, setup=setup) as live:
            yield live, provider, brittle
            assert "Traceback" not in live.output, live.output[-4000:]


@pytest.fixture
def claude(served):
    live, provider, brittle = served
    provider.reset()
    brittle.reset()
    return anthropic.Anthropic(api_key=live.token("caller"), base_url=live.url, max_retries=0)


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_create_stream_and_count_tokens(served, claude):
    answer = claude.messages.create(model=MODEL, max_tokens=32, system="Be brief.", messages=ask("hello"))
    assert answer.type == "message" and answer.role == "assistant" and answer.model == MODEL
    assert answer.content[0].text == CONTENT_PREFIX + "hello" and answer.stop_reason == "end_turn"
    assert answer.usage.input_tokens > 0 and answer.usage.output_tokens > 0
    with claude.messages.stream(model=MODEL, max_tokens=32, messages=ask("streamed")) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(texts) > 1 and "".join(texts) == CONTENT_PREFIX + "streamed"
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0
    assert claude.messages.count_tokens(model=MODEL, messages=ask("count these")).input_tokens > 0
    _, provider, _ = served
    assert provider.chat_requests()[0]["messages"][0] == {"role": "system", "content": "Be brief."}


def test_tool_use_with_streamed_arguments_and_the_result_going_back(served, claude):
    _, provider, _ = served
    pieces = []
    with claude.messages.stream(model=MODEL, max_tokens=64, tools=[TOOL], tool_choice={"type": "any"},
                                messages=ask("ping")) as stream:
        for event in stream:
            if event.type == "input_json":
                pieces.append(event.partial_json)
        first = stream.get_final_message()
    use = first.content[-1]
    assert len(pieces) > 1 and use.type == "tool_use" and use.input == {"text": "ping"}
    assert first.stop_reason == "tool_use"
    second = claude.messages.create(model=MODEL, max_tokens=64, tools=[TOOL], messages=[
        *ask("ping"), {"role": "assistant", "content": [block.model_dump() for block in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "pong"}]}])
    assert second.content[0].text == CONTENT_PREFIX + "pong"
    assert provider.chat_requests()[-1]["messages"][-1] == {"role": "tool", "tool_call_id": use.id,
                                                             "content": "pong"}


def error_of(raised: pytest.ExceptionInfo[anthropic.APIStatusError]) -> tuple[int, str, str]:
    body = raised.value.body
    assert body["type"] == "error", body
    return raised.value.status_code, body["error"]["type"], body["error"]["message"]


def test_caller_errors_in_anthropics_shape(served, claude):
    live, _, _ = served
    with pytest.raises(anthropic.BadRequestError) as raised:
        claude.messages.create(model=MODEL, max_tokens=8,
                               messages=[{"role": "user", "content": [{"type": "video"}]}])
    status, kind, message = error_of(raised)
    assert (status, kind) == (400, "invalid_request_error") and "messages.0.content.0.type" in message
    with pytest.raises(anthropic.BadRequestError) as raised:
        claude.messages.create(model=MODEL, max_tokens=0, messages=ask("x"))
    assert error_of(raised)[:2] == (400, "invalid_request_error") and "max_tokens" in error_of(raised)[2]
    with pytest.raises(anthropic.AuthenticationError) as raised:
        anthropic.Anthropic(api_key="sk-wrong", base_url=live.url, max_retries=0).messages.create(
            model=MODEL, max_tokens=8, messages=ask("x"))
    assert error_of(raised)[:2] == (401, "authentication_error")
    with pytest.raises(anthropic.NotFoundError) as raised:
        claude.messages.create(model="no-such-model", max_tokens=8, messages=ask("x"))
    assert error_of(raised)[:2] == (404, "not_found_error")
    with pytest.raises(anthropic.APIStatusError) as raised:
        claude.messages.create(model=MODEL, max_tokens=8, messages=ask("x" * LIMIT))
    assert error_of(raised)[:2] == (413, "request_too_large")
    unknown = requests.post(f"{live.url}/v1/messages/batches", json={}, timeout=10,
                            headers={"x-api-key": live.token("caller")})
    assert unknown.status_code == 404 and unknown.json()["error"]["type"] == "not_found_error"


def test_a_signed_in_session_without_its_csrf_token_is_403_permission_error(served):
    live, _, _ = served
    browser = requests.Session()
    login = browser.get(f"{live.url}/admin/login/", timeout=10)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login.text).group(1)
    signed_in = browser.post(f"{live.url}/admin/login/?next=/admin/", timeout=10, data={
        "csrfmiddlewaretoken": token, "username": "staff", "password": "staff-pass"},
        headers={"Referer": f"{live.url}/admin/login/"})
    assert signed_in.url.endswith("/admin/")
    refused = browser.post(f"{live.url}/v1/messages", json={"model": MODEL, "max_tokens": 8,
                                                            "messages": ask("x")}, timeout=10,
                           headers={"anthropic-version": "2023-06-01"})
    assert refused.status_code == 403 and refused.json()["error"]["type"] == "permission_error"
    assert refused.headers["anthropic-version"] == "2023-06-01"


def test_a_caller_past_its_requests_per_minute_gets_429_with_retry_after(served):
    live, _, _ = served
    key = live.token("hasty")
    live.shell("from aigen.models import ApiToken\n"
               "ApiToken.objects.filter(user__username='hasty').update(rpm_limit=1)\nprint('ok')")
    hasty = anthropic.Anthropic(api_key=key, base_url=live.url, max_retries=0)
    hasty.messages.create(model=MODEL, max_tokens=8, messages=ask("one"))
    with pytest.raises(anthropic.RateLimitError) as raised:
        hasty.messages.create(model=MODEL, max_tokens=8, messages=ask("two"))
    assert error_of(raised)[:2] == (429, "rate_limit_error")
    assert int(raised.value.response.headers["retry-after"]) >= 1


def test_provider_failures_are_500_api_error_then_529_overloaded_once_the_breaker_opens(served, claude):
    _, provider, brittle = served
    provider.fail_next(Reply(500))
    with pytest.raises(anthropic.InternalServerError) as raised:
        claude.messages.create(model=MODEL, max_tokens=8, messages=ask("x"))
    assert error_of(raised)[:2] == (500, "api_error")
    brittle.fail_next(Reply(500))
    with pytest.raises(anthropic.InternalServerError):
        claude.messages.create(model=BRITTLE, max_tokens=8, messages=ask("x"))  # opens the breaker
    for _ in range(2):  # either worker: the breaker is shared through Redis
        with pytest.raises(anthropic.APIStatusError) as raised:
            claude.messages.create(model=BRITTLE, max_tokens=8, messages=ask("x"))
        assert error_of(raised)[:2] == (529, "overloaded_error")
        assert int(raised.value.response.headers["retry-after"]) >= 1
    assert brittle.chat_calls == 1


def test_a_stream_that_breaks_ends_with_an_error_event(served, claude):
    _, provider, _ = served
    provider.misbehave("*", Behaviour(error_after=1, content_prefix="other: "), times=1)
    with pytest.raises(anthropic.APIStatusError) as raised, \
            claude.messages.stream(model=MODEL, max_tokens=64, messages=ask("broken")) as stream:
        for _ in stream:
            pass
    assert raised.value.body["type"] == "error" and raised.value.body["error"]["type"] == "api_error"
