"""FakeOpenAI's stream misbehaviours, driven by the real openai SDK over
loopback: each does what `Behaviour` documents (the stream supervisor's
tests rely on them)."""
from __future__ import annotations

import openai
import pytest
import requests

from tests.support.fake_openai import CONTENT_PREFIX, MODEL_ID, Behaviour, FakeOpenAI

ASK = [{"role": "user", "content": "x" * 30}]
ANSWER = CONTENT_PREFIX + "x" * 30


@pytest.fixture
def fake():
    with FakeOpenAI() as server:
        yield server


def post(fake: FakeOpenAI, model: str) -> requests.Response:
    body = {"model": model, "messages": ASK, "stream": True}
    return requests.post(fake.url + "/chat/completions", json=body, timeout=5)


def client(fake: FakeOpenAI, timeout: float = 5.0) -> openai.OpenAI:
    return openai.OpenAI(api_key="k", base_url=fake.url, max_retries=0, timeout=timeout)


def texts(stream) -> list[str]:
    return [choice.delta.content or "" for chunk in stream for choice in chunk.choices]


def test_pieces_and_a_cut_after_n_events(fake):
    fake.misbehave(MODEL_ID, Behaviour(pieces=8, cut_after=3))
    received = []
    with pytest.raises(openai.APIConnectionError):
        for piece in client(fake).chat.completions.create(model=MODEL_ID, messages=ASK, stream=True):
            received.extend(choice.delta.content or "" for choice in piece.choices)
    assert "".join(received) == ANSWER[:15]  # the role chunk, then 3 of 8 pieces of 5


def test_a_behaviour_for_a_number_of_requests_then_normal_answers(fake):
    fake.misbehave("*", Behaviour(pieces=2, omit_done=True), times=1)
    raw = post(fake, "any")
    assert b"[DONE]" not in raw.content and raw.content.count(b"data: ") == 4  # role, 2 pieces, finish
    assert "".join(texts(client(fake).chat.completions.create(model=MODEL_ID, messages=ASK, stream=True))) \
        == ANSWER


def test_a_malformed_event_and_a_prefill_continuation(fake):
    fake.misbehave(MODEL_ID, Behaviour(pieces=4, malformed_at=2))
    raw = post(fake, MODEL_ID)
    assert b"data: {this is not json\n\n" in raw.content
    prefill = [*ASK, {"role": "assistant", "content": ANSWER[:12], "prefix": True}]
    rest = client(fake).chat.completions.create(model="other", messages=prefill)
    assert rest.choices[0].message.content == ANSWER[12:]


def test_refused_prefills_and_errors_that_name_their_code(fake):
    fake.misbehave(MODEL_ID, Behaviour(refuse_prefill=True))
    with pytest.raises(openai.BadRequestError) as caught:
        client(fake).chat.completions.create(
            model=MODEL_ID, messages=[*ASK, {"role": "assistant", "content": "FA", "prefix": True}])
    assert "prefix" in caught.value.message
    fake.misbehave(MODEL_ID, Behaviour(error_code="context_length_exceeded"))
    with pytest.raises(openai.BadRequestError) as caught:
        client(fake).chat.completions.create(model=MODEL_ID, messages=ASK)
    assert caught.value.code == "context_length_exceeded"


def test_a_stall_and_a_provider_that_never_answers(fake):
    fake.misbehave(MODEL_ID, Behaviour(pieces=4, stall_after=1, stall=30))
    with pytest.raises(openai.APITimeoutError):
        texts(client(fake, timeout=0.2).chat.completions.create(model=MODEL_ID, messages=ASK, stream=True))
    fake.misbehave(MODEL_ID, Behaviour(never_answer=True))
    with pytest.raises(openai.APITimeoutError):
        client(fake, timeout=0.2).chat.completions.create(model=MODEL_ID, messages=ASK)
