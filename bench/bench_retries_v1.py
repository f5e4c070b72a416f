"""The retry discipline and recovery measured where the issue measured them:
the real openai SDK (max_retries=0) against `/v1/chat/completions` of the
production server (`make serve`: gunicorn + 2 uvicorn workers, Redis for the
shared breaker state), an upstream with a primary and a fallback fake OpenAI
provider (priority strategy) and the seeded `openai` upstream's retry shape
(read timeout cut to 2 s so a silent primary costs 2 s, not 60).

Needs Redis (BENCH_REDIS_URL, default redis://127.0.0.1:6379/14) and binds
BENCH_PORT (default a free port).
"""
from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import table, verdict

MODEL = "gpt-bench"
OUTAGE_SECONDS = 20.0
CALL_EVERY = 0.25

SETUP = """
from resilience.models import Endpoint, Upstream
row = Upstream.objects.create(
    name="llm", base_url={primary!r}, served_models=[{model!r}], endpoint_strategy="priority",
    connect_timeout=1.0, read_timeout=2.0, deadline=30.0, retry_total=2, retry_backoff_factor=0.5,
    retry_backoff_max=4.0, retry_jitter=0.5, retry_statuses=[429, 500, 502, 503, 504],
    retry_methods=["GET", "POST"], retry_after_max=8.0, breaker_fail_max=5,
    breaker_probe_interval=1.0, breaker_reset_timeout=8.0)
Endpoint.objects.create(upstream=row, name="primary", base_url={primary!r}, priority=0)
Endpoint.objects.create(upstream=row, name="fallback", base_url={fallback!r}, priority=1,
                        model="fallback-model")
"""


def main() -> None:
    import openai

    from tests.support.fake_openai import FakeOpenAI
    from tests.support.live_server import LiveServer

    primary, fallback = FakeOpenAI().start(), FakeOpenAI().start()
    env = {"REDIS_URL": os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14"),
           "CACHE_KEY_PREFIX": f"rslbench{os.getpid()}", "LOG_LEVEL": "WARNING",
           "AI_GENERATE_THROTTLE": "100000/min"}
    server = LiveServer(Path(tempfile.mkdtemp(prefix="bench-v1-")), env=env, workers=2,
                        setup=SETUP.format(primary=primary.url, fallback=fallback.url, model=MODEL))
    if os.environ.get("BENCH_PORT"):
        server.port = int(os.environ["BENCH_PORT"])
        server.url = f"http://127.0.0.1:{server.port}"
    with server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=server.token("bench"), max_retries=0)

        def ask() -> tuple[str, float]:
            started = time.monotonic()
            answer = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
            return answer.model, time.monotonic() - started

        _failure_table(ask, primary, fallback)
        _outage_table(ask, primary)
    primary.stop()
    fallback.stop()


def _failure_table(ask: Callable[[], tuple[str, float]], primary: Any, fallback: Any) -> None:
    """One failure of the primary at a time: which model answered, and how long the caller waited."""
    from tests.support.fake_upstream import Reply

    rows = []
    cases = [("500 once", (Reply(500),), MODEL),
             ("429 Retry-After: 1", (Reply(429, retry_after="1"),), MODEL),
             ("429 without Retry-After, twice", (Reply(429), Reply(429)), "fallback-model"),
             ("never answers", (Reply(200, delay=60),), "fallback-model")]
    for name, replies, wanted in cases:
        primary.reset()
        fallback.reset()
        primary.fail_next(*replies)
        model, seconds = ask()
        rows.append((name, model, primary.chat_calls, fallback.chat_calls, f"{seconds:.2f} s",
                     verdict(model == wanted)))
        time.sleep(1.5)  # let the breaker forget (one failure each, far below its threshold)
    table("/v1 with the openai SDK, primary + fallback (priority), make serve with 2 workers",
          ("the primary", "answered by", "primary calls", "fallback calls", "caller waited", ""), rows)


def _outage_table(ask: Callable[[], tuple[str, float]], primary: Any) -> None:
    """The primary down for a while, then healthy: errors seen by callers, and when it is used again."""
    import openai

    from tests.support.fake_upstream import Reply

    primary.reset()
    primary.fail_next(*[Reply(500)] * 10_000)
    started = time.monotonic()
    failed = 0
    while time.monotonic() - started < OUTAGE_SECONDS:
        try:
            ask()
        except openai.APIError:
            failed += 1
        time.sleep(CALL_EVERY)
    down_calls = primary.chat_calls
    primary.reset()  # healthy from now on
    recovered = time.monotonic()
    back_after = None
    while time.monotonic() - recovered < 30:
        if ask()[0] == MODEL:
            back_after = time.monotonic() - recovered
            break
        time.sleep(CALL_EVERY)
    table(f"/v1: primary down {OUTAGE_SECONDS:.0f} s (500s), a call every {CALL_EVERY} s, then healthy",
          ("callers that got an error", "calls that reached the primary while down",
           "primary back in use after recovering", ""),
          [(failed, down_calls, "never" if back_after is None else f"{back_after:.2f} s",
            verdict(failed == 0 and back_after is not None and back_after <= 10))])


if __name__ == "__main__":
    main()
