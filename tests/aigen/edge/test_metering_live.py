"""A caller's token budget held exactly across the production server's four
worker processes (gunicorn + uvicorn, as `make serve` runs them) with Redis:
8 concurrent clients (the real openai SDK, plain and streamed calls) spend a
budget of 50,000 tokens against a loopback provider that counts the tokens it
served. Spent ends within one request's worth of the budget, and the usage
ledger, once the workers flushed it, holds exactly what the provider served."""
from __future__ import annotations

import json
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from tests.support.fake_openai import FakeOpenAI
from tests.support.live_server import LiveServer

MODEL = "gpt-budget"
BUDGET = 50_000
CLIENTS = 8
WORKERS = 4
QUESTION = [{"role": "user", "content": "q" * 400}]
MAX_TOKENS = 200
#: The gateway's reservation for one call: prompt estimate plus max_tokens.
ONE_REQUEST = -(-len(json.dumps(QUESTION, ensure_ascii=False)) // 4) + MAX_TOKENS


@pytest.fixture(scope="module")
def server(tmp_path_factory, redis_url):
    with FakeOpenAI() as provider:
        setup = (
            "from resilience.models import Upstream\n"
            f"Upstream.objects.create(name='llm', base_url={provider.url!r}, served_models=[{MODEL!r}],"
            " read_timeout=5, deadline=10, retry_total=0, breaker_enabled=False, log_sample_rate=0)\n")
        env = {"REDIS_URL": redis_url, "CACHE_KEY_PREFIX": f"budget{secrets.token_hex(4)}",
               "AI_GENERATE_THROTTLE": "1000000/min"}
        with LiveServer(tmp_path_factory.mktemp("budget"), env=env, workers=WORKERS, setup=setup) as live:
            yield live, provider


def spend_until_refused(key: str, url: str, stream: bool, refusals: list[str]) -> int:
    """Call until the budget is spent (a 429 whose Retry-After is the period's
    end); a 429 while others' reservations fill the budget is retried."""
    client = openai.OpenAI(api_key=key, base_url=url + "/v1", max_retries=0)
    answered = 0
    while True:
        try:
            if stream:
                chunks = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=MAX_TOKENS,
                                                        stream=True, stream_options={"include_usage": True})
                assert any(chunk.usage for chunk in chunks)
            else:
                client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=MAX_TOKENS)
            answered += 1
        except openai.RateLimitError as refused:
            refusals.append(refused.body["code"])
            if int(refused.response.headers["Retry-After"]) > 1:
                return answered
            threading.Event().wait(0.02)  # in flight elsewhere: room may come back


def test_a_budget_spent_by_eight_clients_over_four_workers_ends_within_one_request(server):
    live, provider = server
    key = live.token("team")
    live.shell("from aigen.models import ApiToken\n"
               "t = ApiToken.objects.get(user__username='team')\n"
               f"t.token_budget = {BUDGET}; t.save()\nprint('ok')")
    refusals: list[str] = []
    with ThreadPoolExecutor(CLIENTS) as pool:
        answered = sum(pool.map(lambda i: spend_until_refused(key, live.url, i % 2 == 1, refusals),
                                range(CLIENTS)))
    served = provider.served_tokens
    assert answered == len(provider.served_usage())
    assert set(refusals) == {"insufficient_quota"}
    assert BUDGET <= served < BUDGET + ONE_REQUEST
    assert live.terminate() == 0  # a clean stop: every worker flushes its ledger buffer
    ledger = json.loads(live.manage("usage", "--json", "--user", "team"))["totals"]
    assert ledger["prompt_tokens"] + ledger["completion_tokens"] == served
    assert ledger["calls"] == answered
    total = ledger["prompt_tokens"] + ledger["completion_tokens"]
    print(f"\nbudget {BUDGET}: provider served {served} tokens in {answered} calls "
          f"(one request reserves {ONE_REQUEST}); ledger {total}")
