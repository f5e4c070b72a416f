"""A `/v1` request that waits holds no database connection: the production
server (gunicorn + one uvicorn worker, as `make serve` runs it) with a
PostgreSQL connection pool of 2 and a 2 s pool timeout, 8 callers at once (the
real openai SDK) on a provider that takes 3 s to answer. Every request reads
the database first (the policy check and the model map are due on every call
here, and without Redis the policy's change stamp is read from the database);
a request thread that kept its connection while waiting on the provider would
leave 6 of the 8 callers without one (`PoolTimeout` after 2 s, answered 500).

On an SQLite run the pool settings do not apply and the test checks the same
answers without a pool.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import openai

from tests.support.fake_openai import FakeOpenAI
from tests.support.fake_upstream import Reply
from tests.support.live_server import LiveServer

CALLERS = 8
PROVIDER_TAKES = 3.0


def test_callers_waiting_on_a_slow_provider_outnumber_the_pool_and_are_all_answered(tmp_path):
    with FakeOpenAI() as provider:
        setup = (
            "from resilience.models import Upstream\n"
            f"Upstream.objects.create(name='slow', base_url={provider.url!r}, served_models=['m-slow'],"
            " read_timeout=10, deadline=20, retry_total=0, breaker_enabled=False, bulkhead_max=0,"
            " log_sample_rate=0)\n")
        env = {"DB_POOL": "true", "DB_POOL_MIN": "1", "DB_POOL_MAX": "2", "DB_POOL_TIMEOUT": "2",
               "POLICY_CHECK_INTERVAL": "0", "REDIS_URL": "", "AI_GENERATE_THROTTLE": "1000000/min"}
        with LiveServer(tmp_path, env=env, workers=1, setup=setup) as live:
            client = openai.OpenAI(api_key=live.token("caller"), base_url=live.url + "/v1",
                                   max_retries=0, timeout=30)
            provider.fail_next(*[Reply(200, delay=PROVIDER_TAKES)] * CALLERS)

            def ask(_: int) -> str:
                try:
                    answer = client.chat.completions.create(
                        model="m-slow", messages=[{"role": "user", "content": "hi"}])
                except openai.APIStatusError as failed:
                    return f"{failed.status_code} {failed.message}"
                return answer.choices[0].finish_reason

            with ThreadPoolExecutor(CALLERS) as callers:
                outcomes = list(callers.map(ask, range(CALLERS)))
            assert outcomes == ["stop"] * CALLERS, outcomes
            assert provider.chat_calls == CALLERS
            assert "PoolTimeout" not in live.output
