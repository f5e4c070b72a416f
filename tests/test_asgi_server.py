"""The production server as `make serve` runs it (gunicorn managing uvicorn
workers, gunicorn.conf.py) answering streamed and plain generations through
the real openai SDK to a fake provider, many at once."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.support import migrated
from tests.support.fake_openai import MODEL_ID, FakeOpenAI
from tests.support.redis_server import free_port

ROOT = Path(__file__).resolve().parents[1]
BODY = {"template_id": "meeting_minutes", "section_id": "1",
        "data": {"meeting": {"title": "周例会", "date": "2026-11-28", "host": "王", "attendees": ["李"]}}}


def _manage(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.fixture
def server(tmp_path):
    gunicorn = Path(sys.executable).with_name("gunicorn")
    if not gunicorn.exists():
        pytest.skip("gunicorn is not installed next to this Python")
    with FakeOpenAI() as provider:
        port = free_port()
        env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'serve.sqlite3'}",
               "SECRET_KEY": "asgi-test-secret-long-enough-to-serve-0123456789abcdefgh", "DEBUG": "false",
               "OPENAI_API_KEY": "sk-test",
               "OPENAI_BASE_URL": provider.url, "AI_MODEL": MODEL_ID, "AI_GENERATE_THROTTLE": "100000/min",
               "WORKERS": "2", "CALL_LOG_FLUSH_INTERVAL": "0.2",
               "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prometheus")}
        env.pop("REDIS_URL", None)
        (tmp_path / "prometheus").mkdir()  # django-rq's collector opens its files at import
        migrated.sqlite_copy(tmp_path / "serve.sqlite3")  # the run's migrated schema; migrate checks it
        _manage(env, "migrate", "--noinput", "-v", "0")
        _manage(env, "seed_upstreams")
        token = _manage(env, "shell", "-c", (
            "from django.contrib.auth import get_user_model;"
            "from aigen.edge.tokens import token_issue;"
            "u = get_user_model().objects.create_user('load');"
            "print(token_issue(user=u))")).strip().splitlines()[-1]
        process = subprocess.Popen(
            [str(gunicorn), "project.asgi:application", "--config", "gunicorn.conf.py",
             "--bind", f"127.0.0.1:{port}"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(200):
                try:
                    if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                        break
                except (requests.ConnectionError, requests.Timeout):  # workers still booting
                    time.sleep(0.05)
            else:
                raise AssertionError("the server did not start")
            yield url, {"Authorization": f"Bearer {token}"}, provider
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            output, _ = process.communicate(timeout=30)
            assert "Traceback" not in output, output[-4000:]


def _events(response: requests.Response) -> list[tuple[str, dict]]:
    events = []
    for block in response.text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def test_streams_and_generations_many_at_once_under_the_production_worker(server):
    url, headers, provider = server

    def stream(i: int) -> list[tuple[str, dict]]:
        body = {**BODY, "stream": True, "data": {"meeting": {**BODY["data"]["meeting"], "title": f"会{i}"}}}
        with requests.post(f"{url}/api/ai/generate", json=body, headers=headers, stream=True,
                           timeout=30) as response:
            assert response.status_code == 200
            assert response.headers["Content-Type"].startswith("text/event-stream")
            return _events(response)

    def plain(i: int) -> dict:
        body = {**BODY, "data": {"meeting": {**BODY["data"]["meeting"], "title": f"例{i}"}}}
        response = requests.post(f"{url}/api/ai/generate", json=body, headers=headers, timeout=30)
        assert response.status_code == 200, response.text
        return response.json()

    with ThreadPoolExecutor(max_workers=24) as pool:
        streamed = list(pool.map(stream, range(24)))
        answered = list(pool.map(plain, range(24)))
    for events in streamed:
        names = [name for name, _ in events]
        assert names[0] == "start" and names[-1] == "done" and names.count("delta") >= 2
    assert all(a["success"] and a["provider"] == "openai" and a["content"] for a in answered)
    assert provider.chat_calls == 48
    assert requests.post(f"{url}/api/ai/generate", json=BODY, timeout=5).status_code == 401
