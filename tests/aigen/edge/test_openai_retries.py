"""The retry discipline through the OpenAI-compatible front door, with the
real openai SDK as the caller (the project's ASGI application behind
httpx2's ASGI transport) and fake OpenAI providers on loopback as a primary
and a fallback endpoint (priority strategy): a 500 once, a 429 with a short
Retry-After, a primary that never answers, a prompt over the model's
context, a content-policy refusal."""
from __future__ import annotations

import openai
import pytest

from resilience.client import reset_clients
from resilience.client.policy import PolicyRetry
from resilience.models import CallLog, Upstream
from resilience.telemetry.calllog import call_log_flush
from tests.aigen.edge.test_openai import MODEL, ask, sdk_run
from tests.support.fake_openai import CONTENT_PREFIX
from tests.support.fake_upstream import Reply

CONTEXT_ERROR = {"error": {"message": "This model's maximum context length is 8192 tokens. However, your "
                                      "messages resulted in 9001 tokens.",
                           "type": "invalid_request_error", "param": "messages",
                           "code": "context_length_exceeded"}}
CONTENT_ERROR = {"error": {"message": "Your request was rejected as a result of our safety system.",
                           "type": "invalid_request_error", "param": None,
                           "code": "content_policy_violation"}}


@pytest.fixture
def waits(monkeypatch):
    """The retry waits the async transport asked for (none slept)."""
    asked: list[float] = []

    async def asleep(seconds: float) -> None:
        asked.append(seconds)

    monkeypatch.setattr(PolicyRetry, "asleeper", staticmethod(asleep))
    return asked


@pytest.fixture
def door(db, llm_gateway):
    """An `llm` upstream serving MODEL from a primary and a fallback that
    names the model its own way (the seeded openai policy's retry shape);
    returns a caller's API key."""
    return llm_gateway([MODEL], retry_after_max=8)


def complete(key: str, text: str = "hello"):
    return sdk_run(key, lambda c: c.chat.completions.create(model=MODEL, messages=ask(text)))


def retries_logged() -> list[tuple[str, int | None]]:
    call_log_flush()
    log = CallLog.objects.filter(upstream="llm").order_by("-created_at", "-id").first()
    return [(r["endpoint"], r["status"]) for r in log.retries]


def test_a_500_once_is_answered_by_the_primary_on_its_retry(door, providers):
    primary, fallback = providers
    primary.fail_next(Reply(500))
    answer = complete(door)
    assert answer.choices[0].message.content == CONTENT_PREFIX + "hello" and answer.model == MODEL
    assert (primary.chat_calls, fallback.chat_calls) == (2, 0)
    assert retries_logged() == [("primary", 500)]


def test_a_429_with_retry_after_1_is_waited_out_on_the_primary(door, providers, waits):
    primary, fallback = providers
    primary.fail_next(Reply(429, retry_after="1"))
    answer = complete(door)
    assert answer.model == MODEL and waits == [1.0]
    assert (primary.chat_calls, fallback.chat_calls) == (2, 0)


def test_a_primary_that_never_answers_costs_one_timeout_then_the_fallback_answers(door, providers):
    primary, fallback = providers
    Upstream.objects.filter(name="llm").update(read_timeout=0.3)
    reset_clients()
    primary.fail_next(Reply(200, delay=30))  # accepts the connection, never answers
    answer = complete(door, "anyone?")
    assert answer.choices[0].message.content == CONTENT_PREFIX + "anyone?"
    assert answer.model == "fallback-model"
    assert (primary.chat_calls, fallback.chat_calls) == (1, 1)
    assert retries_logged() == [("primary", None)]


def test_context_length_exceeded_goes_to_the_larger_context_model(door, providers):
    primary, fallback = providers
    Upstream.objects.filter(name="llm").update(context_fallback_model="gpt-gateway-long")
    reset_clients()
    primary.fail_next(Reply(400, body=CONTEXT_ERROR))
    answer = complete(door, "a long prompt")
    assert answer.choices[0].message.content == CONTENT_PREFIX + "a long prompt"
    assert answer.model == "gpt-gateway-long"
    assert [body["model"] for body in primary.chat_requests()] == [MODEL, "gpt-gateway-long"]
    assert fallback.chat_calls == 0


def test_context_length_exceeded_without_a_fallback_model_fails_at_once_with_the_providers_message(
        door, providers):
    primary, fallback = providers
    primary.fail_next(Reply(400, body=CONTEXT_ERROR))
    with pytest.raises(openai.BadRequestError) as caught:
        complete(door, "a long prompt")
    assert caught.value.status_code == 400
    assert caught.value.body["code"] == "context_length_exceeded"
    assert caught.value.body["message"] == CONTEXT_ERROR["error"]["message"]
    assert (primary.chat_calls, fallback.chat_calls) == (1, 0)


def test_a_content_policy_refusal_is_returned_at_once_with_the_providers_reason(door, providers):
    primary, fallback = providers
    Upstream.objects.filter(name="llm").update(context_fallback_model="gpt-gateway-long")
    reset_clients()
    primary.fail_next(Reply(400, body=CONTENT_ERROR))
    with pytest.raises(openai.BadRequestError) as caught:
        complete(door, "something refused")
    assert caught.value.body["code"] == "content_policy_violation"
    assert caught.value.body["message"] == CONTENT_ERROR["error"]["message"]
    assert (primary.chat_calls, fallback.chat_calls) == (1, 0)
