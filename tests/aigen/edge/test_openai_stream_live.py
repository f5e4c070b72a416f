"""Supervised streams on the production server (gunicorn + two uvicorn
workers, as `make serve` runs them) with Redis, through the real openai SDK:
a primary that cuts, stalls or leaves out [DONE], a fallback that refuses
prefills. The refusal, learned by one worker, is known to both."""
from __future__ import annotations

import secrets
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from tests.support.fake_openai import CONTENT_PREFIX, Behaviour, FakeOpenAI
from tests.support.live_server import LiveServer

MODEL = "gpt-live"
QUESTION = "L" * (180 - len(CONTENT_PREFIX))
ANSWER = CONTENT_PREFIX + QUESTION


@pytest.fixture(scope="module")
def server(tmp_path_factory, redis_url):
    """One server for the module (starting one takes seconds)."""
    with FakeOpenAI() as primary, FakeOpenAI() as fallback:
        setup = (
            "from resilience.models import Endpoint, Upstream\n"
            f"u = Upstream.objects.create(name='llm', base_url={primary.url!r}, served_models=[{MODEL!r}],"
            " endpoint_strategy='priority', read_timeout=5, deadline=10, retry_total=2,"
            " retry_backoff_factor=0, retry_jitter=0, retry_methods=['POST'], log_sample_rate=1.0,"
            " first_token_timeout=2, stream_idle_timeout=0.5, breaker_enabled=False)\n"
            f"Endpoint.objects.create(upstream=u, name='primary', base_url={primary.url!r}, priority=0)\n"
            f"Endpoint.objects.create(upstream=u, name='fallback', base_url={fallback.url!r}, priority=1,"
            " model='fallback-model')")
        env = {"REDIS_URL": redis_url, "CACHE_KEY_PREFIX": f"live{secrets.token_hex(4)}",
               "AI_GENERATE_THROTTLE": "100000/min"}
        with LiveServer(tmp_path_factory.mktemp("live"), env=env, workers=2, setup=setup) as live:
            client = openai.OpenAI(api_key=live.token("caller"), base_url=live.url + "/v1", max_retries=0)
            yield client, primary, fallback


@pytest.fixture
def served(server):
    client, primary, fallback = server
    primary.reset()
    fallback.reset()
    return client, primary, fallback


def ask(client) -> str:
    stream = client.chat.completions.create(model=MODEL, stream=True, stream_options={"include_usage": True},
                                            messages=[{"role": "user", "content": QUESTION}])
    return "".join(choice.delta.content or "" for chunk in stream for choice in chunk.choices)


def test_cut_stalled_and_unterminated_streams_reach_callers_whole(served):
    client, primary, fallback = served
    primary.misbehave(MODEL, Behaviour(pieces=60, cut_after=40), times=1)
    assert ask(client) == ANSWER
    primary.misbehave(MODEL, Behaviour(pieces=60, stall_after=20, stall=30), times=1)
    assert ask(client) == ANSWER
    primary.misbehave(MODEL, Behaviour(omit_done=True), times=1)
    assert ask(client) == ANSWER
    assert ask(client) == ANSWER  # the primary again, healthy
    assert primary.chat_calls == 4 and fallback.chat_calls == 2


def test_a_prefill_refusal_learned_by_one_worker_is_known_to_every_worker(served):
    client, primary, fallback = served
    primary.misbehave(MODEL, Behaviour(pieces=60, cut_after=30))
    fallback.misbehave("fallback-model", Behaviour(pieces=9, refuse_prefill=True))
    assert ask(client) == ANSWER
    with ThreadPoolExecutor(8) as pool:  # spread over both workers
        assert list(pool.map(lambda _: ask(client), range(8))) == [ANSWER] * 8
    prefills = [body for body in fallback.chat_requests() if body["messages"][-1]["role"] == "assistant"]
    assert len(prefills) == 1  # refused once, then every worker restarts and splices
    assert fallback.chat_calls == 1 + 9
