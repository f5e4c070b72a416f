"""The Messages front door on the production server (gunicorn + two uvicorn
workers, as `make serve` runs them) with Redis, through the real anthropic
and openai SDKs: a pool that mixes wire formats ([an Anthropic-format
primary, an OpenAI-format secondary]) failing over both ways, plain and
streamed; plain calls cached and single-flighted across the workers; a 529
from the provider cooling its endpoint for every worker."""
from __future__ import annotations

import secrets
import time
from concurrent.futures import ThreadPoolExecutor

import anthropic
import openai
import pytest

from resilience.client.endpoints import Pool
from tests.support.fake_anthropic import CONTENT_PREFIX, FakeAnthropic
from tests.support.fake_openai import Behaviour, FakeOpenAI
from tests.support.fake_upstream import Reply
from tests.support.live_server import LiveServer
from tests.support.redis_server import RedisProcess

MIXED = "claude-live"  # the mixed pool, not cached
CACHED = "claude-live-cached"  # the same pool behind an upstream that caches POSTs
BUSY = "claude-live-busy"  # the same pool, a failure moving on at once (one retry, kept for the other)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module (starting one takes seconds), on a Redis of its
    own: its workers share cooldowns there, out of reach of the suite's other
    tests and servers on the shared test database."""
    redis = RedisProcess().start()
    try:
        yield from _serve(tmp_path_factory, redis.url)
    finally:
        redis.stop()


def _serve(tmp_path_factory, redis_url):
    with FakeAnthropic() as primary, FakeOpenAI() as secondary:
        fields = ("endpoint_strategy='priority', read_timeout=5, deadline=10,"
                  " retry_backoff_factor=0, retry_jitter=0, retry_methods=['POST'], log_sample_rate=1.0,"
                  " retry_statuses=[429, 500, 502, 503, 504, 529], retry_after_max=30,"
                  " first_token_timeout=3, stream_idle_timeout=3, breaker_enabled=False")
        setup = "from resilience.models import Endpoint, Upstream\n"
        upstreams = (("mixed", MIXED, ", retry_total=2"), ("busy", BUSY, ", retry_total=1"),
                     ("cached", CACHED, ", retry_total=2, cache_ttl=60, cache_methods=['POST']"))
        for name, model, extra in upstreams:
            setup += (
                f"u = Upstream.objects.create(name={name!r}, base_url={primary.url!r},"
                f" served_models=[{model!r}], {fields}{extra})\n"
                f"Endpoint.objects.create(upstream=u, name='primary', base_url={primary.url!r}, priority=0,"
                " wire_format='anthropic')\n"
                f"Endpoint.objects.create(upstream=u, name='secondary', base_url={secondary.url!r},"
                " priority=1, wire_format='openai')\n")
        env = {"REDIS_URL": redis_url, "CACHE_KEY_PREFIX": f"live{secrets.token_hex(4)}",
               "AI_GENERATE_THROTTLE": "100000/min"}
        with LiveServer(tmp_path_factory.mktemp("messages"), env=env, workers=2, setup=setup) as live:
            yield live, live.token("caller"), primary, secondary


@pytest.fixture
def served(server):
    live, token, primary, secondary = server
    primary.reset()
    secondary.reset()
    secondary.misbehave("*", Behaviour(content_prefix=CONTENT_PREFIX))  # a continuation there is one answer
    return live, token, primary, secondary


def claude(live, token):
    return anthropic.Anthropic(api_key=token, base_url=live.url, max_retries=0)


def ask(text):
    return [{"role": "user", "content": text}]


def test_a_mixed_pool_fails_over_across_formats_plain_and_streamed(served):
    live, token, primary, secondary = served
    client = claude(live, token)
    assert client.messages.create(model=MIXED, max_tokens=16, messages=ask("healthy")).content[0].text == \
        CONTENT_PREFIX + "healthy"
    primary.fail_next(Reply(500), Reply(500))
    answer = client.messages.create(model=MIXED, max_tokens=16, messages=ask("over"))
    assert answer.content[0].text == CONTENT_PREFIX + "over" and answer.stop_reason == "end_turn"
    assert secondary.chat_requests()[-1]["messages"] == ask("over")
    primary.cut_next_stream(after=1)
    with client.messages.stream(model=MIXED, max_tokens=64, messages=ask("a streamed answer")) as stream:
        final = stream.get_final_message()
    assert final.content[0].text == CONTENT_PREFIX + "a streamed answer"
    assert secondary.chat_requests()[-1]["messages"][-1]["role"] == "assistant"  # continued there
    chat = openai.OpenAI(api_key=token, base_url=live.url + "/v1", max_retries=0)
    primary.cut_next_stream(after=2)
    chunks = chat.chat.completions.create(model=MIXED, messages=ask("chat streamed"), stream=True)
    assert "".join(c.delta.content or "" for chunk in chunks for c in chunk.choices) == \
        CONTENT_PREFIX + "chat streamed"
    primary.fail_next(Reply(500), Reply(500))
    plain = chat.chat.completions.create(model=MIXED, messages=ask("chat plain"))
    assert plain.choices[0].message.content == CONTENT_PREFIX + "chat plain"


def test_plain_messages_are_cached_and_single_flighted_across_workers(served):
    live, token, primary, secondary = served
    primary.fail_next(Reply(200, delay=1.0))  # the one call that goes out is slow: the others wait for it

    def call(_):
        client = claude(live, token)  # a connection of its own: spread over both workers
        return client.messages.create(model=CACHED, max_tokens=16, messages=ask("together")).content[0].text

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(call, range(8))) == [CONTENT_PREFIX + "together"] * 8
    assert len(primary.message_requests()) == 1
    with ThreadPoolExecutor(4) as pool:  # later, from either worker: the cached copy
        assert list(pool.map(call, range(4))) == [CONTENT_PREFIX + "together"] * 4
    client = claude(live, token)
    client.messages.create(model=CACHED, max_tokens=16, temperature=0.3, messages=ask("together"))
    assert len(primary.message_requests()) == 2 and secondary.chat_calls == 0  # another field: a miss


def test_a_529_cools_the_endpoint_for_every_worker(served):
    live, token, primary, secondary = served
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    primary.fail_next(Reply(529, body=overloaded, retry_after="60"))  # cooled for retry_after_max (30 s)

    def call(text):
        answer = claude(live, token).messages.create(model=BUSY, max_tokens=8, messages=ask(text))
        return answer.content[0].text

    assert call("busy") == CONTENT_PREFIX + "busy"
    assert len(primary.message_requests()) == 1 and secondary.chat_calls == 1
    time.sleep(Pool.recheck * 2)  # every worker re-reads the shared cooldowns this often
    with ThreadPoolExecutor(4) as pool:  # the cooldown is shared: no worker sends to the primary meanwhile
        assert list(pool.map(call, ["next"] * 4)) == [CONTENT_PREFIX + "next"] * 4
    switches = [line for line in live.output.splitlines() if "resilience.cache" in line or "Redis" in line]
    assert len(primary.message_requests()) == 1 and secondary.chat_calls == 5, switches
