"""The admission step through the real client (sync and async faces) on a real Redis, against a
loopback provider that enforces its own limit: calls past an endpoint's room wait, move to an
endpoint with room, or get NoRoom (503) at their deadline; never a provider 429."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

from resilience import exceptions, upstream
from resilience.cache import reset_engines
from resilience.client import reset_clients
from resilience.client.context import priority_bound
from resilience.client.quota import local_reset
from resilience.models import CallLog, Endpoint, Outcome, Upstream
from resilience.telemetry.calllog import call_log_flush
from tests.support.fake_limited import LimitedOpenAI

WINDOW = 0.4
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


@pytest.fixture
def on_redis(settings, redis_url):
    settings.CACHES = {"default": {"BACKEND": "resilience.cache.FallbackCache", "LOCATION": redis_url,
                                   "KEY_PREFIX": f"adm-{time.monotonic_ns()}"}}
    # The whole window at once (no slices): these tests count calls per window.
    settings.RESILIENCE = {**settings.RESILIENCE, "QUOTA_WINDOW_SECONDS": WINDOW, "QUOTA_POLL_MAX": 0.05,
                           "QUOTA_SLICES": 1}
    reset_engines()
    local_reset()
    yield
    reset_engines()


@pytest.fixture
def providers():
    servers = [LimitedOpenAI(rpm=2, window=WINDOW).start(), LimitedOpenAI(rpm=100, window=WINDOW).start()]
    yield servers
    for server in servers:
        server.stop()


def make(providers, *, deadline=5.0, limits=((2, None),), strategy="priority") -> Upstream:
    row = Upstream(name="llm", base_url=providers[0].root_url, deadline=deadline, retry_total=0,
                   connect_timeout=0.1, read_timeout=min(deadline, 2.0),
                   endpoint_strategy=strategy, log_sample_rate=1.0, breaker_enabled=False)
    row.full_clean()
    row.save()
    for i, (rpm, tpm) in enumerate(limits):
        Endpoint.objects.create(upstream=row, name=f"e{i}", base_url=providers[i].root_url, priority=i,
                                rpm_limit=rpm, tpm_limit=tpm)
    reset_clients()
    return row


def call(name="llm"):
    return upstream(name).post("/v1/chat/completions", json=BODY)


def test_calls_past_the_limit_wait_for_room_and_the_provider_never_refuses(db, on_redis, providers):
    make(providers)
    started = time.monotonic()
    answers = [call().status_code for _ in range(5)]
    assert answers == [200] * 5
    assert providers[0].refused == 0 and providers[0].max_in_window() <= 2
    assert time.monotonic() - started >= 2 * WINDOW * 0.9  # five calls at two per window: two waits


def test_past_its_deadline_a_waiting_call_gets_no_room_without_sending(db, on_redis, providers):
    make(providers, deadline=0.3)
    call(), call()
    with pytest.raises(exceptions.NoRoom) as caught:
        call()
    assert caught.value.status == 503 and caught.value.retry_after >= 1
    assert providers[0].chat_calls == 2
    call_log_flush()
    assert CallLog.objects.filter(outcome=Outcome.REJECTED).count() == 1


def test_routing_skips_an_endpoint_with_no_room_before_sending(db, on_redis, providers):
    make(providers, limits=((2, None), (None, None)))
    answers = [call() for _ in range(6)]
    assert [a.meta.endpoint for a in answers] == ["e0", "e0", "e1", "e1", "e1", "e1"]
    assert providers[0].refused == 0


def test_the_async_face_waits_the_same_way(db, on_redis, providers):
    make(providers)
    upstream("llm").load()  # the policy read here: the loop below never touches the database

    async def five():
        client = upstream("llm")
        return [(await client.apost("/v1/chat/completions", json=BODY)).status_code for _ in range(5)]

    assert asyncio.run(five()) == [200] * 5
    assert providers[0].refused == 0 and providers[0].max_in_window() <= 2


def test_a_limit_announced_in_headers_is_kept_from_the_first_answer_on(db, on_redis):
    with LimitedOpenAI(rpm=3, window=WINDOW, announce=True) as provider:
        row = Upstream(name="llm", base_url=provider.root_url, deadline=5, retry_total=0,
                       breaker_enabled=False)
        row.full_clean()
        row.save()
        reset_clients()
        answers = [call().status_code for _ in range(8)]
        assert answers == [200] * 8 and provider.refused == 0
        assert provider.max_in_window() <= 3


def test_waiting_calls_are_served_high_first_then_normal_then_low(db, on_redis, providers):
    make(providers, limits=((1, None),))
    call()  # the window's one request: everyone below waits
    order: list[str] = []

    def caller(priority: str, delay: float) -> None:
        time.sleep(delay)
        with priority_bound(priority):
            call()
        order.append(priority)

    threads = [threading.Thread(target=caller, args=(p, i * 0.02))
               for i, p in enumerate(["low", "low", "normal", "high"])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert order == ["high", "normal", "low", "low"]
    assert providers[0].refused == 0


def test_a_streams_final_usage_corrects_its_token_reservation(db, on_redis, providers):
    roomy = providers[1]  # a provider that allows these six: only the token limit counts
    make([roomy], deadline=0.3, limits=((None, 200),))
    client = upstream("llm")
    client.load()
    body = {**BODY, "max_tokens": 40, "stream": True, "stream_options": {"include_usage": True}}

    async def streams(count: int) -> list[str]:
        texts = []
        for _ in range(count):
            stream = await client.astream("/v1/chat/completions", json=body)
            try:
                texts.append("".join([event.text async for event in stream]))
            finally:
                await stream.aclose()
        return texts

    # Each reserves its estimate (about 60 tokens): four would not fit in 200 on estimates alone.
    assert len(asyncio.run(streams(6))) == 6
    assert roomy.chat_calls == 6


def test_far_from_the_limit_leases_spare_round_trips_and_the_limit_holds(db, on_redis, monkeypatch, settings):
    from resilience.client.quota import Quota

    # Leases live half the margin: a margin of 1 s keeps them alive through a loaded box's calls.
    settings.RESILIENCE = {**settings.RESILIENCE, "QUOTA_MARGIN_SECONDS": 1.0}
    scripts = []
    run = Quota._script_run
    monkeypatch.setattr(Quota, "_script_run", lambda self, args: scripts.append(1) or run(self, args))
    provider = LimitedOpenAI(rpm=200, window=WINDOW).start()
    try:
        make([provider], limits=((200, None),))
        upstream("llm").load()  # the policy read here: the threads below never touch the database

        def callers(threads: int, each: int) -> list[int]:
            answers: list[int] = []

            def caller():
                answers.extend(call().status_code for _ in range(each))

            started = [threading.Thread(target=caller) for _ in range(threads)]
            for thread in started:
                thread.start()
            for thread in started:
                thread.join()
            return answers

        # Far from the limit (40 of 200): leases of up to 16, a round trip for a few calls.
        assert callers(4, 10) == [200] * 40
        assert len(scripts) <= 40 / 2, len(scripts)

        async def forty():
            client = upstream("llm")
            return [(await client.apost("/v1/chat/completions", json=BODY)).status_code for _ in range(40)]

        time.sleep(WINDOW + 1.1)  # the window (and its margin) empties: far from the limit again
        scripts.clear()
        assert asyncio.run(forty()) == [200] * 40
        assert len(scripts) <= 40 / 2, len(scripts)
        # Past the limit, leases shrink to single admissions near it and callers wait: the
        # provider never sees more than its 200 in a window, nor refuses one.
        time.sleep(WINDOW + 1.1)
        assert callers(8, 40) == [200] * 320
        assert provider.refused == 0 and provider.max_in_window() <= 200
    finally:
        provider.stop()
