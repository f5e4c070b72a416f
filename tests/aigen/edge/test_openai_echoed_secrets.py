"""A provider that echoes its key (issue 23, M1) through what callers see:
the /v1 front door with the real openai SDK (plain and streamed requests)
and the call log."""
from __future__ import annotations

import openai
import pytest

from aigen.edge import openai as openai_views
from resilience.client import reset_clients
from resilience.models import CallLog, Upstream
from resilience.telemetry.calllog import call_log_flush
from tests.aigen.edge.test_openai import ask, sdk_run
from tests.support.fake_openai import FakeOpenAI, error_body
from tests.support.fake_upstream import Reply

KEY = "sk-provider-key-Jw83xQ1/Lp"
MODEL = "echo-model"


@pytest.fixture
def echoing(db, settings, make_client, user):
    """An `echo` upstream serving MODEL from a fake provider, with KEY as
    its credential sent the way `kind` says; returns (provider, caller's SDK key)."""
    from aigen.edge.tokens import token_issue, users

    settings.RESILIENCE = {**settings.RESILIENCE, "SECRETS": {"UPSTREAM_ECHO_KEY": KEY}}
    settings.AIGEN = {**settings.AIGEN, "GENERATE_THROTTLE": "100000/min"}
    with FakeOpenAI() as provider:
        def make(kind: str, name: str = "") -> FakeOpenAI:
            row = Upstream(name="echo", base_url=provider.url, served_models=[MODEL], auth_kind=kind,
                           auth_name=name, auth_env_var="UPSTREAM_ECHO_KEY", retry_total=0,
                           read_timeout=5, deadline=10, log_sample_rate=1.0)
            row.full_clean()
            row.save()
            reset_clients()
            openai_views.models.clear()
            users.clear()
            return provider

        make.token = token_issue(user=user)
        yield make


def _everything(err: openai.APIStatusError) -> str:
    return f"{err}\n{err.message}\n{err.body!r}\n{err.response.text}\n{dict(err.response.headers)!r}"


@pytest.mark.parametrize("stream", [False, True])
def test_v1_passes_a_401_on_without_the_key_it_echoed(stream, echoing):
    provider = echoing("bearer")
    provider.fail_next(Reply(401, body=error_body(401, f"Incorrect API key provided: {KEY}."),
                             headers={"X-Request-Key": KEY}))
    with pytest.raises(openai.AuthenticationError) as caught:
        sdk_run(echoing.token, lambda c: c.chat.completions.create(model=MODEL, messages=ask("hi"),
                                                                   stream=stream))
    assert provider.requests[-1].headers["Authorization"] == f"Bearer {KEY}"  # sent to the provider...
    shown = _everything(caught.value)
    assert KEY not in shown  # ...never back to the caller
    assert caught.value.body["message"] == "Incorrect API key provided: REDACTED."
    call_log_flush()
    assert KEY not in repr(list(CallLog.objects.values()))


def test_v1_passes_a_500_on_without_the_query_key_of_the_url_it_echoed(echoing):
    provider = echoing("query", name="key")
    provider.fail_next(Reply(500, body=error_body(
        500, f"upstream failure at POST {provider.url}/chat/completions?key={KEY}&trace=1")))
    with pytest.raises(openai.InternalServerError) as caught:
        sdk_run(echoing.token, lambda c: c.chat.completions.create(model=MODEL, messages=ask("hi")))
    assert provider.requests[-1].params["key"] == KEY
    assert KEY not in _everything(caught.value)
    assert "?key=REDACTED&trace=1" in caught.value.body["message"]
