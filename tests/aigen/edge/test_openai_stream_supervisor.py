"""Streams that survive their provider, through /v1/chat/completions with the
real openai SDK as the caller (the project's ASGI application behind httpx2's
ASGI transport), two fake OpenAI-compatible providers on loopback as the
primary and the fallback endpoint, and timers of fractions of a second."""
from __future__ import annotations

import asyncio
import json

import httpx2
import openai
import pytest
from asgiref.sync import async_to_sync
from prometheus_client import REGISTRY

from aigen.edge.tokens import token_issue
from resilience.client import reset_clients
from resilience.client.breaker import SharedBreaker
from resilience.client.stream import prefill_refusers
from resilience.models import CallLog, Endpoint, MinuteRollup, Upstream
from resilience.telemetry.calllog import call_log_flush
from tests.support.fake_openai import CONTENT_PREFIX, MODEL_ID, Behaviour
from tests.support.fake_upstream import CUT, FakeUpstream, Reply

MODEL = "gpt-gateway"
#: A second served model, which the primary cuts (the concurrency test's other half).
CUT_MODEL = "gpt-gateway-cut"
# 180 characters of answer: 60 content events of 3 characters.
QUESTION = "Q" * (180 - len(CONTENT_PREFIX))
ANSWER = CONTENT_PREFIX + QUESTION
#: The timers of the tests about timers. The others keep 2 s: a cut never waits for a timer, and a
#: loaded CI box must not turn a slow fallback into one more attempt.
TIMER = 0.3
SLACK_TIMER = 2.0


@pytest.fixture
def gateway(transactional_db, llm_gateway):
    """An `llm` upstream: priority strategy, the primary then a fallback that
    names the model its own way; stream timers of 2 s (`timers()` shortens them)."""
    return llm_gateway([MODEL, CUT_MODEL], first_token_timeout=SLACK_TIMER, stream_idle_timeout=SLACK_TIMER,
                       stream_max_seconds=30, pool_size=300)


def timers(**fields) -> None:
    Upstream.objects.filter(name="llm").update(**fields)
    reset_clients()


def sdk_run(key: str, work):
    from project.asgi import application

    async def go():
        transport = httpx2.ASGITransport(app=application)
        async with httpx2.AsyncClient(transport=transport, base_url="http://testserver") as http:
            client = openai.AsyncOpenAI(api_key=key, base_url="http://testserver/v1", http_client=http,
                                        max_retries=0)
            return await work(client)

    return async_to_sync(go)()


async def streamed(client, model: str = MODEL, question: str = QUESTION) -> dict:
    """One streamed chat: its text, final chunk's model, finish reasons, usage and ids."""
    stream = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], stream=True,
        stream_options={"include_usage": True})
    text, finishes, models, ids, usage = [], [], [], set(), None
    async for chunk in stream:
        ids.add(chunk.id)
        models.append(chunk.model)
        for choice in chunk.choices:
            text.append(choice.delta.content or "")
            if choice.finish_reason:
                finishes.append(choice.finish_reason)
        if chunk.usage is not None:
            usage = chunk.usage
    return {"text": "".join(text), "finishes": finishes, "model": models[-1], "ids": ids, "usage": usage}


def ask(key: str, **kwargs) -> dict:
    return sdk_run(key, lambda client: streamed(client, **kwargs))


def rows() -> list[CallLog]:
    call_log_flush()
    return list(CallLog.objects.filter(upstream="llm").order_by("created_at", "id"))


def cuts_counted() -> float:
    return REGISTRY.get_sample_value("resilience_stream_events_total",
                                     {"upstream": "llm", "endpoint": "primary", "event": "cut"}) or 0.0


def test_a_stream_cut_after_40_of_60_events_reaches_the_caller_whole(gateway, providers):
    primary, fallback = providers
    primary.misbehave(MODEL, Behaviour(pieces=60, cut_after=40))
    counted = cuts_counted()
    answer = ask(gateway)
    assert cuts_counted() == counted + 1  # /metrics
    assert answer["text"] == ANSWER  # nothing missing, nothing twice
    assert answer["finishes"] == ["stop"] and len(answer["ids"]) == 1
    assert answer["model"] == "fallback-model"  # the model that finished the answer
    continuation = fallback.chat_requests()[-1]["messages"]
    assert continuation[-1] == {"role": "assistant", "content": ANSWER[:120], "prefix": True}
    # Usage: the continuation's (the partial text as its prompt, the rest as its completion).
    assert answer["usage"].completion_tokens == len(ANSWER[120:]) // 4 + 1
    logged = rows()
    assert [(r.endpoint, r.outcome) for r in logged] == [("primary", "connection_error"), ("fallback", "ok")]
    assert "stream cut after 41 events" in logged[0].error
    signals = {}
    for rollup in MinuteRollup.objects.filter(upstream="llm"):
        for name, count in rollup.signals.items():
            signals[(rollup.endpoint, name)] = signals.get((rollup.endpoint, name), 0) + count
    assert signals[("primary", "stream_cut")] == 1 and signals[("primary", "stream_failover")] == 1
    assert signals[("fallback", "stream_continuation")] == 1


def test_a_stall_is_continued_after_the_idle_timeout_and_the_next_call_works(gateway, providers):
    primary, fallback = providers
    primary.misbehave(MODEL, Behaviour(pieces=60, stall_after=20, stall=30))
    timers(stream_idle_timeout=TIMER)
    assert ask(gateway)["text"] == ANSWER
    assert "silent for 0.3 s" in rows()[0].error
    primary.reset()  # healthy again
    assert ask(gateway)["text"] == ANSWER
    assert primary.chat_calls == 1 and fallback.chat_calls == 1


def test_a_slow_first_token_is_answered_from_the_fallback(gateway, providers):
    primary, fallback = providers
    primary.misbehave(MODEL, Behaviour(first_token_delay=30))
    timers(first_token_timeout=TIMER)
    answer = ask(gateway)
    assert answer["text"] == ANSWER and answer["model"] == "fallback-model"
    assert fallback.chat_requests()[-1]["messages"][-1]["role"] == "user"  # nothing sent yet: a fresh ask
    logged = rows()
    assert logged[0].outcome == "timeout" and "no first token within 0.3 s" in logged[0].error


def test_a_fallback_that_refuses_prefills_gets_a_restart_spliced_and_remembered(gateway, providers):
    primary, fallback = providers
    primary.misbehave(MODEL, Behaviour(pieces=60, cut_after=30))
    fallback.misbehave("fallback-model", Behaviour(pieces=7, refuse_prefill=True))
    assert ask(gateway)["text"] == ANSWER
    assert prefill_refusers(upstream="llm", endpoints=("primary", "fallback")) == {"fallback"}
    assert fallback.chat_calls == 2  # the refused prefill, then the restart
    assert ask(gateway)["text"] == ANSWER
    assert fallback.chat_calls == 3  # learned: straight to the restart
    assert all(m["messages"][-1]["role"] == "user" for m in fallback.chat_requests()[1:])


def test_a_restart_that_differs_ends_with_an_error_naming_the_cut(gateway, providers):
    primary, fallback = providers
    primary.misbehave(MODEL, Behaviour(pieces=60, cut_after=30))
    fallback.misbehave("fallback-model", Behaviour(refuse_prefill=True, content_prefix="ANOTHER: "))
    received = []

    async def work(client):
        stream = await client.chat.completions.create(model=MODEL, stream=True,
                                                      messages=[{"role": "user", "content": QUESTION}])
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")

    with pytest.raises(openai.APIError) as caught:
        sdk_run(gateway, work)
    assert "".join(received) == ANSWER[:90]  # what came, then the error: never a silent truncation
    assert "stream cut after 31 events" in caught.value.message
    assert "prefill" not in caught.value.message


def test_a_malformed_event_is_skipped_and_counted(gateway, providers):
    primary, _ = providers
    primary.misbehave(MODEL, Behaviour(pieces=20, malformed_at=10))
    assert ask(gateway)["text"] == ANSWER
    logged = rows()
    assert [(r.endpoint, r.outcome) for r in logged] == [("primary", "ok")]
    rollup = MinuteRollup.objects.get(upstream="llm", endpoint="primary")
    assert rollup.signals["stream_skipped"] == 1


def test_a_complete_stream_without_done_is_finished_with_its_usage(gateway, providers):
    primary, fallback = providers
    primary.misbehave(MODEL, Behaviour(omit_done=True))
    answer = ask(gateway)
    assert answer["text"] == ANSWER and answer["finishes"] == ["stop"]
    assert answer["usage"] is not None and answer["usage"].completion_tokens == len(ANSWER) // 4 + 1
    assert fallback.chat_calls == 0 and [r.outcome for r in rows()] == ["ok"]


def test_an_error_event_mid_stream_is_continued(gateway, providers):
    primary, _ = providers
    primary.misbehave(MODEL, Behaviour(pieces=60, error_after=10))
    assert ask(gateway)["text"] == ANSWER
    assert "the provider's stream failed" in rows()[0].error


def test_a_provider_that_cuts_every_stream_trips_its_breaker(gateway, providers):
    primary, _ = providers
    primary.misbehave(MODEL, Behaviour(pieces=10, cut_after=5))
    for _ in range(3):
        assert ask(gateway)["text"] == ANSWER
    assert SharedBreaker.status_of("llm/primary", fail_max=3, reset_timeout=30)["state"] == "open"
    assert ask(gateway)["text"] == ANSWER
    assert primary.chat_calls == 3  # the open breaker keeps the fourth away


def test_many_concurrent_streams_whose_primary_cuts_half_all_complete(gateway, providers):
    primary, fallback = providers
    primary.misbehave(CUT_MODEL, Behaviour(pieces=20, cut_after=10))
    Upstream.objects.filter(name="llm").update(breaker_enabled=False)  # every cut is continued, none avoided
    reset_clients()
    count = 60

    async def work(client):
        return await asyncio.gather(*(streamed(client, model=CUT_MODEL if i % 2 else MODEL,
                                               question=f"{QUESTION}{i:03d}") for i in range(count)))

    answers = sdk_run(gateway, work)
    assert [a["text"] for a in answers] == [f"{ANSWER}{i:03d}" for i in range(count)]
    # Every cut stream is continued on the fallback; on a loaded machine an uncut one
    # that fell silent past the idle timer is continued there too.
    assert fallback.chat_calls >= count // 2


def test_a_generated_stream_cut_midway_is_continued_on_the_same_endpoint(transactional_db, user, openai_fake,
                                                                       section2_data):
    """POST /api/ai/generate with "stream": true: its own events, one answer."""
    from project.asgi import application

    key = token_issue(user=user)
    openai_fake.misbehave(MODEL_ID, Behaviour(pieces=8, cut_after=3), times=1)

    async def go():
        transport = httpx2.ASGITransport(app=application)
        async with httpx2.AsyncClient(transport=transport, base_url="http://testserver") as http:
            response = await http.post("/api/ai/generate", headers={"Authorization": f"Bearer {key}"}, json={
                "template_id": "emergency_plan", "section_id": "2", "data": section2_data, "stream": True})
            return response.text

    events = []
    for block in async_to_sync(go)().strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((fields["event"], json.loads(fields["data"])))
    assert events[0][0] == "start" and events[-1][0] == "done"
    text = "".join(data["content"] for name, data in events if name == "delta")
    first, continuation = openai_fake.chat_requests()
    assert text == CONTENT_PREFIX + first["messages"][-1]["content"]
    prefill = continuation["messages"][-1]
    assert prefill["role"] == "assistant" and text.startswith(prefill["content"])
    assert events[-1][1]["usage"]["completion_tokens"] == len(text[len(prefill["content"]):]) // 4 + 1


def test_the_python_client_streams_supervised(gateway, providers):
    """`upstream(name).astream(...)`: the same supervision for the project's own code."""
    from resilience import upstream

    primary, _ = providers
    primary.misbehave(MODEL, Behaviour(pieces=60, cut_after=40))

    async def work():
        stream = await upstream("llm").astream("chat/completions", json={
            "model": MODEL, "stream": True, "messages": [{"role": "user", "content": QUESTION}]})
        try:
            text = "".join([event.text async for event in stream])
        finally:
            await stream.aclose()
        return text, stream.endpoints, stream.counts, stream.model

    text, endpoints, counts, model = async_to_sync(work)()
    assert text == ANSWER and endpoints == ["primary", "fallback"] and model == "fallback-model"
    assert counts == {"cut": 1, "failover": 1, "continuation": 1}


def test_a_provider_that_never_answers_costs_one_timeout_then_the_fallback_answers(gateway, providers):
    primary, fallback = providers
    primary.misbehave(MODEL, Behaviour(never_answer=True))
    timers(read_timeout=TIMER)
    answer = ask(gateway)
    assert answer["text"] == ANSWER and answer["model"] == "fallback-model"
    assert primary.chat_calls == 1 and fallback.chat_calls == 1  # one timeout, then the fallback
    assert rows()[-1].endpoint == "fallback"


def test_a_silent_provider_costs_a_stream_its_first_token_timeout_not_the_read_timeout(gateway, providers):
    primary, fallback = providers
    primary.misbehave(MODEL, Behaviour(never_answer=True))
    # The read timeout alone would spend the whole deadline on the silent primary.
    timers(first_token_timeout=TIMER, read_timeout=30, deadline=3)
    answer = ask(gateway)
    assert answer["text"] == ANSWER and answer["model"] == "fallback-model"
    assert primary.chat_calls == 1 and fallback.chat_calls == 1


def test_stream_max_seconds_caps_a_stream_with_an_error_not_a_continuation(gateway, providers):
    primary, fallback = providers
    primary.misbehave(MODEL, Behaviour(pieces=10, stall_after=3, stall=5))
    timers(stream_max_seconds=TIMER)
    received = []

    async def work(client):
        stream = await client.chat.completions.create(model=MODEL, stream=True,
                                                      messages=[{"role": "user", "content": QUESTION}])
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")

    with pytest.raises(openai.APIError) as caught:
        sdk_run(gateway, work)
    assert "stream_max_seconds (0.3 s) passed" in caught.value.message
    assert caught.value.code == "upstream_timeout"
    # What the primary sent before it stalled (its first 3 pieces, 54 characters), or less when
    # a loaded box spent the 0.3 s before they came through; never more: nothing continued it.
    assert ANSWER[:54].startswith("".join(received)) and fallback.chat_calls == 0
    assert rows()[0].outcome == "timeout"


def test_a_stream_that_broke_after_a_tool_call_ends_with_an_error_not_a_continuation(gateway, providers):
    _, fallback = providers
    tool = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a'}}
    call = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": MODEL, "choices": [
        {"index": 0, "finish_reason": None, "delta": {"tool_calls": [tool]}}]}
    with FakeUpstream() as cut:
        cut.script("/v1/chat/completions", Reply(200, headers={"Content-Type": "text/event-stream"},
                                                 chunks=(f"data: {json.dumps(call)}\n\n".encode(), CUT)))
        Endpoint.objects.filter(name="primary").update(base_url=cut.url + "/v1")
        reset_clients()

        async def work(client):
            stream = await client.chat.completions.create(model=MODEL, stream=True,
                                                          messages=[{"role": "user", "content": QUESTION}])
            return [chunk async for chunk in stream]

        with pytest.raises(openai.APIError) as caught:
            sdk_run(gateway, work)
    assert "a tool call or a second choice cannot be continued" in caught.value.message
    assert fallback.chat_calls == 0  # its arguments would have been sent twice


def _frame(text: str, finish: str | None = None) -> bytes:
    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": MODEL,
             "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]}
    return f"data: {json.dumps(chunk)}\n\n".encode()


_USAGE = b'data: {"id": "c1", "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 4}}\n\n'


def body_messages(key: str, *frames: bytes | float) -> list[tuple[bytes, bool]]:
    """One streamed call through the application (no usage asked) to a primary that sends `frames`
    (Reply.chunks): the body messages the server was given to write, each (body, more_body)."""
    from project.asgi import application

    messages: list[tuple[bytes, bool]] = []

    async def recording(scope, receive, send):
        async def record(message):
            if message["type"] == "http.response.body":
                messages.append((message.get("body", b""), message.get("more_body", False)))
            await send(message)
        await application(scope, receive, record)

    async def go():
        async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=recording),
                                      base_url="http://testserver") as http:
            answer = await http.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                                     json={"model": MODEL, "stream": True,
                                           "messages": [{"role": "user", "content": "q"}]})
            assert answer.status_code == 200

    with FakeUpstream() as primary:
        primary.script("/v1/chat/completions", Reply(200, headers={"Content-Type": "text/event-stream"},
                                                     chunks=frames))
        Endpoint.objects.filter(name="primary").update(base_url=primary.url + "/v1")
        reset_clients()
        async_to_sync(go)()
    return messages


def test_a_providers_read_goes_out_in_one_write_and_the_last_one_with_the_end(gateway, providers):
    """Events that came in one read of the provider are one body message; the read that ends the
    stream (its [DONE] and the body's end with it) goes with [DONE] and the end of the body."""
    a, b, c, last = _frame("a"), _frame("b"), _frame("c"), _frame("d", "stop")
    sent = body_messages(gateway, a, 0.2, b + c, 0.2, last + _USAGE + b"data: [DONE]\n\n")
    # As the provider's writes came (a box that stalled 0.2 s would have read the first two at once).
    assert sent in ([(a, True), (b + c, True), (last + b"data: [DONE]\n\n", False)],
                    [(a + b + c, True), (last + b"data: [DONE]\n\n", False)])


def test_a_last_read_whose_body_end_is_still_awaited_is_not_held_back(gateway, providers):
    """The final chunk and [DONE] came, the body's end did not: the chunk goes out at once, and
    [DONE] with the end once the supervisor stopped waiting for the body's end (FINISH_GRACE)."""
    a, last = _frame("a"), _frame("d", "stop")
    sent = body_messages(gateway, a, 0.2, last + b"data: [DONE]\n\n", 1.0)
    assert sent[-1] == (b"data: [DONE]\n\n", False)
    assert sent[:-1] in ([(a, True), (last, True)], [(a + last, True)])  # the latter: a box that stalled


def test_the_calls_a_stream_makes_while_it_is_sent_carry_the_callers_request_id(gateway, providers):
    """The continuation after a cut is called while the body is being sent: the server binds the
    request's id for the whole send (RequestIdMiddleware wraps no part for it), so both attempts'
    call log rows carry the caller's X-Request-ID."""
    primary, _ = providers
    primary.misbehave(MODEL, Behaviour(pieces=60, cut_after=40))

    async def work(client):
        stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": QUESTION}], stream=True,
            extra_headers={"X-Request-ID": "stream-req.7"})
        return "".join([choice.delta.content or "" async for chunk in stream for choice in chunk.choices])

    assert sdk_run(gateway, work) == ANSWER
    assert [(r.endpoint, r.request_id) for r in rows()] == [("primary", "stream-req.7"),
                                                            ("fallback", "stream-req.7")]
