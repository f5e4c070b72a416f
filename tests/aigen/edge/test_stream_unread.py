"""A /v1 stream its caller never reads frees what it reserved when it closes (issue 29, the unread
stream gap), not when the reservations expire: the tokens held on the endpoint (its `tpm_limit`,
resilience.client.quota) are corrected to the prompt alone, and the caller's spend (its token
budget) is settled unbilled.

- On the server as it runs (uvicorn, one worker, Redis), with the real openai SDK: a stream opened
  and closed without being iterated; the caller's next call, which would not fit beside the first's
  reservations, is admitted and answered, and the ledger bills only it.
- On the ASGI application, a caller that goes away between the answer's headers and its first byte
  (the response's generator never starts): the request's end frees the caller's budget.
"""
from __future__ import annotations

import asyncio
import json
import secrets
import time

import openai
import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth import get_user_model

from aigen.edge import openai as openai_views
from aigen.edge.tokens import token_issue
from aigen.edge.tokens import users as token_users
from aigen.generation.ledger import usage_flush
from aigen.generation.quotas import CallerLimits, quota_check
from aigen.models import ApiToken, UsageLedger
from resilience.client import reset_clients
from resilience.models import Upstream
from tests.support.fake_openai import Behaviour, FakeOpenAI
from tests.support.live_server import LiveServer

MODEL = "gpt-unread"
BIG = 900  # max_tokens: two such calls do not fit the endpoint's tpm nor the caller's budget
TPM = 1000
BUDGET = 500


def ask(client: openai.OpenAI) -> str:
    try:
        client.chat.completions.create(model=MODEL, max_tokens=BIG,
                                       messages=[{"role": "user", "content": "hi"}])
    except openai.APIStatusError as err:
        code = err.body.get("code") if isinstance(err.body, dict) else ""
        return f"{err.status_code} {code}"
    return "200"


def admitted_soon(client: openai.OpenAI) -> list[str]:
    """The next call's outcomes, asked again while the server is still closing the first stream
    (at most a few seconds; every refusal is listed)."""
    outcomes = [ask(client)]
    give_up = time.monotonic() + 5
    while outcomes[-1] != "200" and time.monotonic() < give_up:
        time.sleep(0.05)
        outcomes.append(ask(client))
    return outcomes


@pytest.fixture(scope="module")
def served(tmp_path_factory, redis_url):
    """The server, an `llm` endpoint with a `tpm_limit` two big calls do not fit; the keys of a
    caller without limits and of one with a budget one big call's reservation fills."""
    with FakeOpenAI() as provider:
        setup = (
            "from resilience.models import Endpoint, Upstream\n"
            f"u = Upstream.objects.create(name='llm', base_url={provider.url!r}, served_models=[{MODEL!r}],"
            " read_timeout=10, deadline=2, connect_timeout=0.5, retry_total=0, breaker_enabled=False,"
            " log_sample_rate=1.0)\n"
            f"Endpoint.objects.create(upstream=u, name='account', base_url={provider.url!r},"
            f" tpm_limit={TPM})\n")
        env = {"REDIS_URL": redis_url, "CACHE_KEY_PREFIX": f"unread{secrets.token_hex(4)}",
               "AI_GENERATE_THROTTLE": "100000/min"}
        with LiveServer(tmp_path_factory.mktemp("unread"), env=env, workers=1, setup=setup) as live:
            keys = {name: live.token(name) for name in ("open", "budgeted")}
            live.shell("from aigen.models import ApiToken;"
                       "t = ApiToken.objects.get(user__username='budgeted');"
                       f"t.token_budget = {BUDGET}; t.save()")
            yield live, keys, provider


def closed_unread(live: LiveServer, key: str, provider: FakeOpenAI) -> list[str]:
    """A stream opened and closed without being iterated (its first token would come in 3 s), then
    the caller's next big call: its outcomes."""
    client = openai.OpenAI(api_key=key, base_url=live.url + "/v1", max_retries=0)
    provider.misbehave(MODEL, Behaviour(first_token_delay=3), times=1)
    stream = client.chat.completions.create(model=MODEL, max_tokens=BIG, stream=True,
                                            messages=[{"role": "user", "content": "hi"}])
    stream.close()  # never iterated
    return admitted_soon(client)


def ledger_totals(live: LiveServer, username: str) -> dict:
    return json.loads(live.shell(
        "import json; from django.contrib.auth import get_user_model;"
        "from aigen.generation.selectors import usage_list;"
        f"u = get_user_model().objects.get(username={username!r});"
        "print(json.dumps(usage_list(user_id=u.pk)['totals'], default=str))"))


def ledger_written(live: LiveServer, username: str) -> dict:
    """The ledger's totals once the server's buffer wrote the billed call (it writes every
    USAGE_FLUSH_INTERVAL, 1 s), read again a flush later: a wrongly billed unread stream written
    in a later flush than the call after it is counted too."""
    give_up = time.monotonic() + 15
    usage = ledger_totals(live, username)
    while not usage["calls"] and time.monotonic() < give_up:
        time.sleep(0.2)
        usage = ledger_totals(live, username)
    time.sleep(1.5)
    return ledger_totals(live, username)


def test_a_stream_closed_unread_frees_the_tokens_it_held_on_the_endpoint(served):
    live, keys, provider = served
    before = provider.chat_calls
    outcomes = closed_unread(live, keys["open"], provider)
    print(f"\nendpoint tpm {TPM}, max_tokens {BIG}: after a stream closed unread, the next call {outcomes}")
    assert outcomes[-1] == "200", outcomes  # else 503 endpoint_limits_reached: the first's tokens held
    assert provider.chat_calls - before == 2


def test_a_stream_closed_unread_is_not_billed_and_frees_the_callers_budget(served):
    live, keys, provider = served
    outcomes = closed_unread(live, keys["budgeted"], provider)
    usage = ledger_written(live, "budgeted")
    print(f"\nbudget {BUDGET}, max_tokens {BIG}: after a stream closed unread, the next call {outcomes}; "
          f"ledger {usage}")
    assert outcomes[-1] == "200", outcomes  # else 429 insufficient_quota: the first's estimate held or spent
    assert usage["calls"] == 1  # the unread stream is not billed


@pytest.fixture
def caller(transactional_db, settings):
    """An `llm` upstream on a fake whose streams wait before their first token; the caller's key,
    with a budget one call's reservation fills."""
    with FakeOpenAI() as provider:
        provider.misbehave(MODEL, Behaviour(first_token_delay=30))
        settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK,
                                   "DEFAULT_THROTTLE_RATES": {"generate": "100000/min"}}
        Upstream.objects.create(name="llm", base_url=provider.url, served_models=[MODEL], read_timeout=40,
                                deadline=40, retry_total=0, breaker_enabled=False, log_sample_rate=1.0)
        reset_clients()
        openai_views.models.clear()
        token_users.clear()
        key = token_issue(user=get_user_model().objects.create_user("caller"))
        ApiToken.objects.filter(user__username="caller").update(token_budget=BUDGET)
        token_users.clear()
        yield key, provider


def request_then_leave(key: str) -> None:
    """A stream request to the ASGI application whose caller goes away once the answer's headers
    are being sent: the response's generator never starts."""
    from project.asgi import application

    body = json.dumps({"model": MODEL, "stream": True, "max_tokens": BIG,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
             "query_string": b"", "root_path": "", "client": ("127.0.0.1", 5000),
             "server": ("testserver", 80),
             "headers": [(b"host", b"testserver"), (b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode()),
                         (b"authorization", f"Bearer {key}".encode())]}

    async def go() -> list[str]:
        answering = asyncio.Event()
        messages = [{"type": "http.request", "body": body, "more_body": False}]
        sent: list[str] = []

        async def receive():
            if messages:
                return messages.pop(0)
            await answering.wait()  # the caller leaves as the answer starts
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message["type"])
            if message["type"] == "http.response.start":
                answering.set()
                await asyncio.Event().wait()  # the headers never leave: the body is never asked for

        await application(scope, receive, send)
        return sent

    assert async_to_sync(go)() == ["http.response.start"]


def test_a_caller_gone_before_the_first_byte_frees_its_budget(caller):
    key, provider = caller
    request_then_leave(key)
    assert provider.chat_calls == 1
    # Nothing spent and nothing held now: the budget admits (QuotaExceeded while a reservation holds).
    user = get_user_model().objects.get(username="caller")
    quota_check(user_id=user.pk, limits=CallerLimits(budget=BUDGET))
    usage_flush()
    assert not UsageLedger.objects.exists()  # not billed
