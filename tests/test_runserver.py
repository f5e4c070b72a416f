"""`make run`'s development server (project/management/commands/runserver.py):
the ASGI application under uvicorn with Django's autoreloader, as a new user
starts it. Issue 25, item 8: under Django's WSGI server a /v1 stream was
consumed synchronously (a warning per response) and, after a few earlier
calls, ended with `stream_interrupted`."""
from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import threading
import time

import anthropic
import openai
import pytest
import requests

from tests.support import fake_anthropic
from tests.support.fake_openai import CONTENT_PREFIX, Behaviour, FakeOpenAI
from tests.support.fake_token_server import FakeTokenServer
from tests.support.fake_upstream import Reply
from tests.support.live_server import ROOT, LiveServer

MODEL = "gpt-dev"
QUESTION = "D" * (120 - len(CONTENT_PREFIX))
ANSWER = CONTENT_PREFIX + QUESTION


class DevServer(LiveServer):
    """`manage.py runserver` (autoreload on, as `make run` starts it) on the
    LiveServer's database and helpers."""

    def start(self) -> DevServer:
        self.env.update({"DEBUG": "true", "PYTHONWARNINGS": "always"})
        self.prepare()
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "runserver", f"127.0.0.1:{self.port}"], cwd=ROOT, env=self.env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self._reader = threading.Thread(target=self._read, args=(self.process,), daemon=True)
        self._reader.start()
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            with contextlib.suppress(requests.ConnectionError, requests.Timeout):
                if requests.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            time.sleep(0.05)
        self.stop()
        raise AssertionError("runserver did not start:\n" + self.output[-4000:])

    def stop(self) -> None:
        # The autoreloader's parent and its serving child: the whole group.
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        if self._reader is not None:
            self._reader.join(timeout=5)
        self.drop_database()  # the PostgreSQL run's scratch database goes with the server


@pytest.fixture
def dev(tmp_path):
    with FakeOpenAI() as provider:
        setup = (
            "from resilience.models import Endpoint, Upstream\n"
            f"u = Upstream.objects.create(name='llm', base_url={provider.url!r}, served_models=[{MODEL!r}],"
            " read_timeout=5, deadline=10, retry_total=1, retry_backoff_factor=0, retry_jitter=0,"
            " first_token_timeout=2, stream_idle_timeout=2, breaker_enabled=False)\n"
            f"Endpoint.objects.create(upstream=u, name='primary', base_url={provider.url!r}, priority=0)")
        with DevServer(tmp_path, env={"AI_GENERATE_THROTTLE": "100000/min"}, setup=setup) as server:
            yield server, openai.OpenAI(api_key=server.token("newcomer"), base_url=server.url + "/v1",
                                        max_retries=0)


def test_runserver_serves_the_async_views_with_streams_whole_and_no_warning(dev):
    server, client = dev
    for _ in range(4):  # a few earlier calls, as a new user makes them
        answer = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": QUESTION}])
        assert answer.choices[0].message.content == ANSWER
    for _ in range(2):
        stream = client.chat.completions.create(model=MODEL, stream=True,
                                                messages=[{"role": "user", "content": QUESTION}])
        assert "".join(c.delta.content or "" for chunk in stream for c in chunk.choices) == ANSWER
    assert "ASGI development server" in server.output
    assert "must consume asynchronous iterators" not in server.output
    assert "stream_interrupted" not in server.output


CLAUDE = "claude-dev"


@pytest.fixture
def dev_messages(tmp_path):
    """`make run` in front of a pool that mixes wire formats, caching plain POSTs."""
    with fake_anthropic.FakeAnthropic() as primary, FakeOpenAI() as secondary:
        secondary.misbehave("*", Behaviour(content_prefix=fake_anthropic.CONTENT_PREFIX))
        setup = (
            "from resilience.models import Endpoint, Upstream\n"
            f"u = Upstream.objects.create(name='claude', base_url={primary.url!r},"
            f" served_models=[{CLAUDE!r}], endpoint_strategy='priority', read_timeout=5, deadline=10,"
            " retry_total=2, retry_backoff_factor=0, retry_jitter=0, retry_methods=['POST'],"
            " retry_statuses=[500, 529], first_token_timeout=2,"
            " stream_idle_timeout=2, breaker_enabled=False, cache_ttl=60, cache_methods=['POST'])\n"
            f"Endpoint.objects.create(upstream=u, name='primary', base_url={primary.url!r}, priority=0,"
            " wire_format='anthropic')\n"
            f"Endpoint.objects.create(upstream=u, name='secondary', base_url={secondary.url!r}, priority=1)")
        with DevServer(tmp_path, env={"AI_GENERATE_THROTTLE": "100000/min"}, setup=setup) as server:
            client = anthropic.Anthropic(api_key=server.token("newcomer"), base_url=server.url, max_retries=0)
            yield server, client, primary, secondary


def test_runserver_serves_messages_over_a_mixed_pool_with_the_cache(dev_messages):
    server, client, primary, secondary = dev_messages
    ask = [{"role": "user", "content": "hello"}]
    first = client.messages.create(model=CLAUDE, max_tokens=16, messages=ask)
    again = client.messages.create(model=CLAUDE, max_tokens=16, messages=ask)
    assert again.model_dump() == first.model_dump()
    assert len(primary.message_requests()) == 1  # the second from the cache
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    primary.fail_next(Reply(529, body=overloaded), Reply(529, body=overloaded))
    over = client.messages.create(model=CLAUDE, max_tokens=16, messages=[{"role": "user", "content": "529"}])
    assert over.content[0].text == fake_anthropic.CONTENT_PREFIX + "529" and secondary.chat_calls == 1
    primary.cut_next_stream(after=1)
    with client.messages.stream(model=CLAUDE, max_tokens=64,
                                messages=[{"role": "user", "content": "a streamed answer"}]) as stream:
        final = stream.get_final_message()
    assert final.content[0].text == fake_anthropic.CONTENT_PREFIX + "a streamed answer"
    assert secondary.chat_requests()[-1]["messages"][-1]["role"] == "assistant"  # continued there
    assert "stream_interrupted" not in server.output and "Traceback" not in server.output


LIFETIME = 5.0
REFRESH_EVERY = LIFETIME * 4 / 5  # refreshed with a fifth of the life left (resilience.client.accounts)
ACCOUNTS = ("acct-a", "acct-b")


@pytest.fixture
def dev_accounts(tmp_path):
    """`make run` (one process, no Redis: the row's lock serialises refreshes) in front of two
    OAuth2 refresh-token accounts of a loopback token server whose tokens live 5 seconds."""
    tokens = FakeTokenServer(lifetime=LIFETIME).start()
    try:
        firsts = {name: tokens.refresh_token_issue(name) for name in ACCOUNTS}
        setup = (
            "from resilience.models import Endpoint, Upstream\n"
            "from resilience.client.accounts import account_refresh_token_set\n"
            f"u = Upstream.objects.create(name='acct', base_url={tokens.url + '/v1'!r},"
            f" served_models=[{MODEL!r}], read_timeout=5, deadline=10, retry_total=2,"
            " retry_backoff_factor=0, retry_jitter=0, breaker_enabled=False)\n"
            f"for name, first in {sorted(firsts.items())!r}:\n"
            f"    e = Endpoint(upstream=u, name=name, base_url={tokens.url + '/v1'!r},"
            f" credential_kind='oauth2_refresh', token_url={tokens.token_url!r}, client_id=name)\n"
            "    e.full_clean(); e.save()\n"
            "    account_refresh_token_set(endpoint=e, refresh_token=first)\n")
        # No CREDENTIALS_KEYS and no Redis, as a new user's `make run`: a development key is derived.
        env = {"AI_GENERATE_THROTTLE": "100000/min", "REDIS_URL": "", "CREDENTIALS_KEYS": ""}
        with DevServer(tmp_path, env=env, setup=setup) as server:
            yield server, tokens, openai.OpenAI(api_key=server.token("newcomer"), base_url=server.url + "/v1",
                                                max_retries=0)
    finally:
        tokens.stop()


def test_runserver_serves_accounts_that_refresh_themselves(dev_accounts):
    server, tokens, client = dev_accounts
    statuses: list[str] = []

    def call() -> None:
        try:
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
            statuses.append("200")
        except openai.APIStatusError as failed:
            statuses.append(f"{failed.status_code} {failed.message}")

    ran = 2.5 * REFRESH_EVERY  # each account comes due twice
    until = time.monotonic() + ran

    def keep_calling() -> None:
        while time.monotonic() < until:
            call()

    callers = [threading.Thread(target=keep_calling) for _ in range(3)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    refreshes = {name: tokens.refreshes[name] for name in ACCOUNTS}
    print(f"\nmake run, two accounts, {LIFETIME:.0f}-second tokens, {ran:.0f} s of 3 callers: "
          f"{len(statuses)} calls, refreshes {refreshes}, reuses {tokens.reuses}")
    assert set(statuses) == {"200"}, [s for s in statuses if s != "200"][:3]
    assert all(2 <= count <= math.ceil(ran / REFRESH_EVERY) + 1 for count in refreshes.values()), refreshes
    assert tokens.reuses == 0
    before, refused = tokens.refreshes["acct-a"], tokens.provider_401
    tokens.revoke_access("acct-a")  # the provider revokes a live token: one refresh, no caller error
    # Each call goes to either account (weighted random): six fixed calls all went to acct-b in one run
    # of 64, acct-a's revoked token never met and no refresh to count. Calls until it is, then five more.
    for _ in range(64):
        call()
        if tokens.provider_401 > refused:
            break
    for _ in range(5):
        call()
    assert tokens.provider_401 > refused  # the revoked token was met
    assert set(statuses) == {"200"} and tokens.refreshes["acct-a"] == before + 1
    assert "development key" in server.output
    log = server.output
    assert not any(token in log for token in tokens.issued)
