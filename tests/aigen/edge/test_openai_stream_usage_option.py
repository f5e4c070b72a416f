"""/v1/chat/completions streams against a strict OpenAI-compatible provider
that refuses `stream_options` (a 400 naming it): the gateway's own request for
the final usage event is dropped and remembered per endpoint, the caller's
own request is answered with the provider's refusal. The real openai SDK as
the caller, two fake providers on loopback (primary, then fallback)."""
from __future__ import annotations

import openai
import pytest

from aigen.generation.ledger import usage_flush
from aigen.models import UsageLedger
from resilience.client.stream import usage_refusers
from tests.aigen.edge.test_openai_stream_supervisor import MODEL, sdk_run
from tests.support.fake_openai import CONTENT_PREFIX, Behaviour

QUESTION = "how are you"
ANSWER = CONTENT_PREFIX + QUESTION


@pytest.fixture
def gateway(transactional_db, llm_gateway):
    return llm_gateway([MODEL])


def chat(key: str, **options) -> dict:
    """One streamed chat: its text and the usage chunk, if any came."""
    async def work(client):
        stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": QUESTION}], stream=True, **options)
        text, usage = [], None
        async for chunk in stream:
            text.extend(choice.delta.content or "" for choice in chunk.choices)
            usage = chunk.usage or usage
        return {"text": "".join(text), "usage": usage}

    return sdk_run(key, work)


def ledger() -> tuple[int, int]:
    """(calls, tokens) the caller's ledger row holds."""
    usage_flush()
    row = UsageLedger.objects.get(user__username="caller", model=MODEL)
    return row.calls, row.prompt_tokens + row.completion_tokens


def remembered(endpoint: str) -> bool:
    return endpoint in usage_refusers(upstream="llm")


def test_a_provider_refusing_stream_options_streams_without_them_and_is_remembered(gateway, providers):
    primary, fallback = providers
    primary.misbehave(MODEL, Behaviour(refuse_stream_options=True))
    answer = chat(gateway)
    assert answer == {"text": ANSWER, "usage": None}
    sent = primary.chat_requests()
    assert sent[0]["stream_options"] == {"include_usage": True}  # the gateway asked, for its ledger
    assert len(sent) == 2 and "stream_options" not in sent[1]  # once more, on the same endpoint, without
    assert fallback.chat_calls == 0  # a refused option is not the endpoint's failure: no failover
    assert remembered("primary") and not remembered("fallback")

    assert chat(gateway)["text"] == ANSWER
    assert primary.chat_calls == 3 and "stream_options" not in primary.chat_requests()[-1]  # learned
    # No usage came: the ledger counts the calls, with no tokens (nothing guessed).
    assert ledger() == (2, 0)


def test_a_caller_that_asked_for_usage_gets_the_providers_refusal_as_it_is(gateway, providers):
    primary, fallback = providers
    primary.misbehave(MODEL, Behaviour(refuse_stream_options=True))
    with pytest.raises(openai.BadRequestError) as refused:
        chat(gateway, stream_options={"include_usage": True})
    assert refused.value.status_code == 400 and "stream_options" in refused.value.message
    assert primary.chat_calls == 1 and fallback.chat_calls == 0
    assert not remembered("primary")


def test_a_provider_that_takes_stream_options_still_serves_the_usage_to_the_ledger(gateway, providers):
    primary, _ = providers
    answer = chat(gateway)
    assert answer == {"text": ANSWER, "usage": None}  # the caller did not ask: not sent it
    assert primary.chat_requests()[0]["stream_options"] == {"include_usage": True}
    calls, tokens = ledger()
    assert calls == 1 and tokens > 0
    assert not remembered("primary")


def test_a_worker_reads_the_shared_refusals_at_most_every_quarter_second(gateway, providers, monkeypatch):
    """Not one store read (a hop off the loop on Redis) per stream: what another worker learned
    reaches this one within `REFUSERS_REREAD`; what this one learns applies to its next stream."""
    from resilience.client import stream as streams

    primary, _ = providers
    reads: list[str] = []
    read = streams.usage_refusers

    def counted(*, upstream):
        reads.append(upstream)
        return read(upstream=upstream)

    monkeypatch.setattr(streams, "usage_refusers", counted)
    monkeypatch.setattr(streams, "REFUSERS_REREAD", 60.0)  # a slow box: still within it
    assert chat(gateway)["text"] == ANSWER and len(reads) == 1
    streams.usage_refusal_remember(upstream="llm", endpoint="primary")  # another worker learned it
    assert chat(gateway)["text"] == ANSWER and len(reads) == 1  # read moments ago: not again
    assert "stream_options" in primary.chat_requests()[-1]
    monkeypatch.setattr(streams, "REFUSERS_REREAD", 0.0)  # as when the time is up
    assert chat(gateway)["text"] == ANSWER and len(reads) == 2
    assert "stream_options" not in primary.chat_requests()[-1]  # learned from the shared store


def test_a_refusal_this_worker_learns_applies_to_its_next_stream_at_once(gateway, providers):
    primary, _ = providers
    primary.misbehave(MODEL, Behaviour(refuse_stream_options=True))
    chat(gateway)
    assert len(primary.chat_requests()) == 2  # refused, then sent without
    chat(gateway)
    sent = primary.chat_requests()
    assert len(sent) == 3 and "stream_options" not in sent[2]  # no second refusal
