"""Retry discipline and recovery, measured in real time on a primary and a
fallback endpoint (priority strategy) with the seeded `openai` upstream's
retry shape (2 retries, backoff 0.5 s + up to 0.5 s jitter, 429/5xx, POST,
Retry-After up to 8 s, breaker after 5 failures, probes after 1 s doubling to
8 s), through the real client against loopback fakes:

- a 500 once: answered by the primary on its retry;
- a 429 with Retry-After 1: waited out, answered by the primary;
- a 429 without Retry-After, every time: backoff on the primary, then the fallback;
- a primary that accepts the connection and never answers (read timeout 2 s):
  one timeout, then the fallback;
- a primary down for 20 s (500s) under a call every 0.25 s, then healthy:
  how many calls reached it while down (probes), and how long after it
  recovered the first call was answered by it again (the issue: <= 10 s).
"""
from __future__ import annotations

import time

from bench.common import django_setup, table, verdict

CHAT = "/chat/completions"
BODY = {"model": "gpt-bench", "messages": [{"role": "user", "content": "hi"}]}
OUTAGE_SECONDS = 20.0
CALL_EVERY = 0.25


def _make_pool(primary_url: str, fallback_url: str) -> None:
    from resilience.client import reset_clients
    from resilience.models import Endpoint, Upstream

    row, _ = Upstream.objects.update_or_create(name="bench-llm", defaults={
        "base_url": primary_url, "endpoint_strategy": "priority", "connect_timeout": 1.0,
        "read_timeout": 2.0, "deadline": 30.0, "retry_total": 2, "retry_backoff_factor": 0.5,
        "retry_backoff_max": 4.0, "retry_jitter": 0.5, "retry_statuses": [429, 500, 502, 503, 504],
        "retry_methods": ["GET", "POST"], "retry_after_max": 8.0, "breaker_fail_max": 5,
        "breaker_probe_interval": 1.0, "breaker_reset_timeout": 8.0, "log_sample_rate": 0.0})
    Endpoint.objects.filter(upstream=row).delete()
    Endpoint.objects.create(upstream=row, name="primary", base_url=primary_url, priority=0)
    Endpoint.objects.create(upstream=row, name="fallback", base_url=fallback_url, priority=1)
    reset_clients()


def _timed_call() -> tuple[str, int, float]:
    from resilience import upstream

    started = time.monotonic()
    response = upstream("bench-llm").post(CHAT, json=BODY)
    return response.endpoint, response.attempts, time.monotonic() - started


def main() -> None:
    django_setup()
    from tests.support.fake_upstream import FakeUpstream, Reply

    primary, fallback = FakeUpstream().start(), FakeUpstream().start()
    ok = Reply(200, body={"choices": []})
    fallback.script(CHAT, ok)
    _make_pool(primary.url, fallback.url)
    rows = []
    cases = [("500 once", (Reply(500), ok), "primary"),
             ("429 Retry-After: 1", (Reply(429, retry_after="1"), ok), "primary"),
             ("429 without Retry-After, always", (Reply(429),), "fallback"),
             ("never answers (read timeout 2 s)", (Reply(200, delay=60),), "fallback")]
    for name, replies, wanted in cases:
        _make_pool(primary.url, fallback.url)
        primary.reset()
        primary.script(CHAT, *replies)
        endpoint, attempts, seconds = _timed_call()
        rows.append((name, endpoint, attempts, primary.count(CHAT), f"{seconds:.2f} s",
                     verdict(endpoint == wanted)))
    table("one call, primary + fallback (priority)",
          ("primary answers", "answered by", "attempts", "primary hits", "time", ""), rows)

    _make_pool(primary.url, fallback.url)
    primary.reset()
    primary.script(CHAT, Reply(500))
    started = time.monotonic()
    while time.monotonic() - started < OUTAGE_SECONDS:
        _timed_call()
        time.sleep(CALL_EVERY)
    down_hits = primary.count(CHAT)
    primary.script(CHAT, ok)
    recovered = time.monotonic()
    back_after = None
    while time.monotonic() - recovered < 30:
        if _timed_call()[0] == "primary":
            back_after = time.monotonic() - recovered
            break
        time.sleep(CALL_EVERY)
    table(f"primary down {OUTAGE_SECONDS:.0f} s, a call every {CALL_EVERY} s, then healthy",
          ("calls that reached it while down", "back in use after recovering", ""),
          [(down_hits, "never" if back_after is None else f"{back_after:.2f} s",
            verdict(back_after is not None and back_after <= 10))])
    primary.stop()
    fallback.stop()


if __name__ == "__main__":
    main()
