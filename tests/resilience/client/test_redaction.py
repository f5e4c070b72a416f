"""A credential never leaves the client: not in exceptions, call logs, API
answers, metrics or logs, whatever way a call fails (issue: a deadline error
carried urllib3's text, URL and query key included)."""
from __future__ import annotations

import socket

import pytest
from rest_framework.test import APIClient

from aigen.edge.tokens import token_issue
from resilience import exceptions as errors
from resilience import upstream
from resilience.client.urls import display_url
from resilience.models import CallLog
from resilience.telemetry.calllog import call_log_flush
from resilience.telemetry.metrics import scrape_registry
from tests.support.fake_upstream import Reply
from tests.support.roles import role_user

SECRET = "sk-SECRET-4d9f2c1b7e"
AUTH = {
    "query": {"auth_kind": "query", "auth_name": "api_key"},
    "header": {"auth_kind": "header", "auth_name": "X-Api-Key"},
    "bearer": {"auth_kind": "bearer"},
}


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# name: (policy, replies, calls before the one that must fail)
FAILURES = {
    "deadline": ({"deadline": 0.2, "read_timeout": 2.0, "retry_total": 0}, [Reply(200, delay=0.6)], 0),
    "read timeout": ({"read_timeout": 0.1, "retry_total": 0}, [Reply(200, delay=0.5)], 0),
    "refused": ({"base_url": None, "retry_total": 1}, [], 0),
    "reset": ({"retry_total": 1}, [Reply(reset=True)], 0),
    "5xx with retries": ({"retry_total": 2}, [Reply(503)], 0),
    "breaker open": ({"retry_total": 0, "breaker_fail_max": 1}, [Reply(500)], 1),
    "stale fallback": ({"retry_total": 0, "cache_ttl": 1, "cache_serve_stale": True},
                       [Reply(200, body={"v": 1}), Reply(500)], 1),
}


@pytest.mark.parametrize("auth", list(AUTH))
@pytest.mark.parametrize("failure", list(FAILURES))
def test_no_failure_path_shows_the_secret(failure, auth, fake, make_upstream, monkeypatch, caplog):
    monkeypatch.setenv("UPSTREAM_KEY", SECRET)
    policy, replies, before = FAILURES[failure]
    if policy.get("base_url", "") is None:
        policy = {**policy, "base_url": f"http://127.0.0.1:{_closed_port()}"}
    make_upstream(auth_env_var="UPSTREAM_KEY", **AUTH[auth], **policy)
    if replies:
        fake.script("/x", *replies)
    client = upstream("api")
    seen: list[str] = []
    for _ in range(before):
        try:
            client.get("/x", params={"q": "1"})
        except errors.UpstreamError as err:
            seen += [str(err), repr(err.as_dict())]
    if failure == "stale fallback":
        from resilience.client import responses

        later = responses.wall_clock() + 5
        monkeypatch.setattr(responses, "wall_clock", lambda: later)
        stale = client.get("/x", params={"q": "1"})
        assert stale.stale
    else:
        with pytest.raises(errors.UpstreamError) as caught:
            client.get("/x", params={"q": "1"})
        err = caught.value
        seen += [str(err), err.message, repr(err.as_dict()), repr(err.args)]
        if err.__cause__ is not None:
            seen.append(repr(err.__cause__))

    if auth == "query" and replies:
        assert any(r.params.get("api_key") == SECRET for r in fake.requests)  # the key was sent...
    call_log_flush()
    rows = list(CallLog.objects.values())
    assert rows, "the failure was logged"
    seen.append(repr(rows))
    seen.append(caplog.text)
    from prometheus_client import generate_latest

    seen.append(generate_latest(scrape_registry()).decode())
    for text in seen:
        assert SECRET not in text  # ...and nothing shows it


def test_the_probe_api_answers_without_the_secret(fake, make_upstream, monkeypatch):
    monkeypatch.setenv("UPSTREAM_KEY", SECRET)
    make_upstream(auth_env_var="UPSTREAM_KEY", auth_kind="query", auth_name="api_key", deadline=0.2,
                  read_timeout=2.0, retry_total=0, health_path="/health?x=1")
    fake.script("/health", Reply(200, delay=0.6))
    staff = role_user("operator", username="ops")  # probing needs change_upstream
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {token_issue(user=staff)}")
    response = api.post("/api/resilience/upstreams/api/probe")
    assert response.status_code == 200, response.content
    probe = response.json()["probe"]
    assert probe["ok"] is False and probe["error"]["code"] == "upstream_timeout"
    assert SECRET not in response.content.decode()


@pytest.mark.parametrize(("url", "shown"), [
    ("https://api.example.com/v1", "https://api.example.com/v1"),
    ("https://user:pw-1@api.example.com:8443/v1?key=sk-abc&x-code=zz#frag",
     "https://REDACTED@api.example.com:8443/v1?key=REDACTED&x-code=REDACTED#REDACTED"),
    ("https://api.example.com/v1?sk-bare-secret&a=1", "https://api.example.com/v1?REDACTED&a=REDACTED"),
    ("http://[::1]:8000/v1?token=t", "http://[::1]:8000/v1?token=REDACTED"),
])
def test_display_url_keeps_no_credential(url, shown):
    assert display_url(url) == shown
