"""Clean shutdown under load: SIGTERM to the production server (the
gunicorn master of `make serve`, uvicorn workers) while 200 generations are
in flight against a slow loopback provider. What holds: every in-flight
request is answered in full (no reset, no error), the server exits within
gunicorn's graceful timeout, and every answered call is in the database
afterwards: one call-log row each and the rollup counts (0 lost), written
by the workers' exit flush (resilience/telemetry/buffered.py: the writer's
interval is set to a minute here, so nothing but the exit flush writes them)."""
from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.support.fake_openai import MODEL_ID, FakeOpenAI
from tests.support.fake_upstream import Reply
from tests.support.live_server import LiveServer

IN_FLIGHT = 200
PROVIDER_DELAY = 3.0  # each answer waits this long: the requests are in flight when SIGTERM lands
GRACEFUL_TIMEOUT = 30  # gunicorn.conf.py
SLACK = 15.0


@pytest.fixture
def slow_server(tmp_path):
    with FakeOpenAI() as provider:
        env = {"OPENAI_API_KEY": "sk-shutdown-test", "OPENAI_BASE_URL": provider.url, "AI_MODEL": MODEL_ID,
               "AI_GENERATE_THROTTLE": "100000/min", "CALL_LOG_FLUSH_INTERVAL": "60",
               "AI_RECORD_FLUSH_INTERVAL": "60", "CALL_LOG_BUFFER_MAX": "100000"}
        # The policy is set before the workers start: a queryset update() bypasses the
        # change notice the workers watch (a save, as the admin makes, would not).
        setup = ("from resilience.models import Upstream\n"
                 "Upstream.objects.filter(name='openai').update(log_sample_rate=1.0, pool_size=500,"
                 " bulkhead_max=0, read_timeout=60, deadline=120, retry_total=0, breaker_fail_max=1000)")
        with LiveServer(tmp_path, env=env, workers=2, setup=setup) as server:
            yield server, provider


def test_sigterm_with_200_calls_in_flight_loses_nothing(slow_server):
    server, provider = slow_server
    headers = {"Authorization": f"Bearer {server.token('load')}"}
    provider.fail_next(*[Reply(200, delay=PROVIDER_DELAY)] * IN_FLIGHT)
    started = threading.Barrier(IN_FLIGHT + 1)

    def call(i: int) -> tuple[int, dict]:
        body = {"template_id": "meeting_minutes", "section_id": "1", "use_cache": False,
                "data": {"meeting": {"title": f"停机{i}", "date": "2026-11-28", "host": "王",
                                     "attendees": ["李"]}}}
        started.wait()
        response = requests.post(f"{server.url}/api/ai/generate", json=body, headers=headers, timeout=120)
        return response.status_code, response.json()

    with ThreadPoolExecutor(max_workers=IN_FLIGHT) as pool:
        futures = [pool.submit(call, i) for i in range(IN_FLIGHT)]
        started.wait()
        deadline = time.monotonic() + 60
        while provider.chat_calls < IN_FLIGHT and time.monotonic() < deadline:
            time.sleep(0.05)
        assert provider.chat_calls == IN_FLIGHT, f"only {provider.chat_calls} calls reached the provider"
        signalled = time.monotonic()
        exit_code = server.terminate()
        stopped_after = time.monotonic() - signalled
        results = [f.result() for f in futures]  # a reset would raise ConnectionError here

    print(f"shutdown: SIGTERM with {IN_FLIGHT} in flight, server exited in {stopped_after:.2f}s "
          f"(graceful timeout {GRACEFUL_TIMEOUT}s), exit code {exit_code}")
    assert exit_code == 0, server.output[-4000:]
    assert stopped_after < GRACEFUL_TIMEOUT + SLACK
    assert [status for status, _ in results] == [200] * IN_FLIGHT, [r for r in results if r[0] != 200][:3]
    assert all(body["success"] and body["content"] for _, body in results)
    assert "Traceback" not in server.output, server.output[-4000:]

    counts = json.loads(server.shell(
        "import json;"
        "from django.db.models import Sum;"
        "from resilience.models import CallLog, MinuteRollup;"
        "from aigen.models import Generation;"
        "print(json.dumps({'rows': CallLog.objects.filter(upstream='openai').count(),"
        " 'rollup_calls': MinuteRollup.objects.filter(upstream='openai').aggregate(n=Sum('calls'))['n'],"
        " 'generations': Generation.objects.count()}))"))
    print(f"shutdown: in the database afterwards: {counts}")
    assert counts == {"rows": IN_FLIGHT, "rollup_calls": IN_FLIGHT, "generations": IN_FLIGHT}
