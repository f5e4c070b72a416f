"""Providers: the mock, and the OpenAI provider through the real openai SDK,
the httpx2 transport and the real resilient client, against a fake server."""
# ruff: noqa: RUF001
from __future__ import annotations

import gzip
import json

import httpx2
import pytest

from aigen.exceptions import ProviderError, ProviderTimeout, ProviderUnavailable
from aigen.generation.providers import MOCK_MARK, MockProvider, OpenAIProvider, Prompt, get_provider
from aigen.generation.registry import get_registry
from aigen.generation.transport import SDK_BASE_URL, UpstreamTransport
from resilience.models import CallLog, Upstream
from resilience.telemetry.calllog import call_log_flush
from tests.support.fake_openai import CONTENT_PREFIX, MALFORMED_JSON, MODEL_ID
from tests.support.fake_upstream import FakeUpstream, Reply


def _prompt(section_id: str = "2", data: dict | None = None) -> Prompt:
    template = get_registry().template("emergency_plan")
    section = template.section(section_id)
    clean = section.clean(data if data is not None else dict(template.sample_data))
    return Prompt(messages=section.messages(clean), params=dict(section.params),
                  template_title=section.template_title, section_title=section.title, data=clean,
                  labels=dict(section.labels))


def _provider() -> OpenAIProvider:
    provider = get_provider()
    assert isinstance(provider, OpenAIProvider)
    return provider


# -- mock ------------------------------------------------------------------------------

def test_mock_is_the_default_without_a_key():
    provider = get_provider()
    assert isinstance(provider, MockProvider)
    assert (provider.name, provider.model) == ("mock", "mock-1")


def test_mock_is_deterministic_marked_and_built_from_section_and_data(section2_data):
    provider = MockProvider()
    first = provider.complete(_prompt("2", section2_data))
    assert first == provider.complete(_prompt("2", section2_data))
    assert first.content.startswith(MOCK_MARK)
    assert "企业概况" in first.content
    assert "员工人数：120" in first.content and "企业名称：示例化工有限公司" in first.content
    assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens
    section2_data["enterprise_info"]["employees_count"] = 99
    assert provider.complete(_prompt("2", section2_data)).content != first.content
    streamed = "".join(provider.stream(_prompt("2", section2_data)))
    assert streamed == provider.complete(_prompt("2", section2_data)).content


# -- OpenAI through the resilient client ----------------------------------------------

def test_openai_happy_path_goes_through_the_upstream_policy(openai_fake):
    provider = _provider()
    prompt = _prompt()
    completion = provider.complete(prompt)
    assert completion.content == CONTENT_PREFIX + prompt.messages[-1]["content"]
    assert completion.usage.total_tokens and completion.usage.prompt_tokens
    [request] = openai_fake.requests
    assert request.path == "/v1/chat/completions"  # the policy's base URL path + the SDK's path
    assert request.headers["Authorization"] == "Bearer sk-test-key"
    assert request.headers["Host"].startswith("127.0.0.1:")
    body = request.json()
    assert body["model"] == MODEL_ID and body["temperature"] == 0.3 and body["max_tokens"] == 1500
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    call_log_flush()
    log = CallLog.objects.get(upstream="openai")
    assert (log.method, log.path, log.status, log.outcome) == ("POST", "/v1/chat/completions", 200, "ok")


def test_the_key_goes_only_as_the_upstreams_credential(openai_fake, openai_policy):
    """H2 (issue 23): the SDK used to put OPENAI_API_KEY on every request, so
    whoever could move the `openai` upstream's URL (dropping its credential
    needs no permission) sent the key along. Now the key is the policy's."""
    openai_policy(auth_kind="none", auth_env_var="")
    _provider().complete(_prompt())
    [request] = openai_fake.requests
    assert "Authorization" not in request.headers and "sk-test-key" not in repr(request.headers)


def test_a_stored_provider_upstream_takes_the_key_over_when_migrated(openai_policy, settings):
    import importlib
    from types import SimpleNamespace

    from django.apps import apps
    from django.db import connection

    migration = importlib.import_module("resilience.migrations.0007_credentials")
    openai_policy(auth_kind="none", auth_env_var="")
    settings.AIGEN = {**settings.AIGEN, "OPENAI_API_KEY": ""}  # no key: the SDK sent none either
    migration.bind_the_provider_key(apps, SimpleNamespace(connection=connection))
    assert Upstream.objects.get(name="openai").auth_kind == "none"
    settings.AIGEN = {**settings.AIGEN, "OPENAI_API_KEY": "sk-test-key"}
    migration.bind_the_provider_key(apps, SimpleNamespace(connection=connection))
    row = Upstream.objects.get(name="openai")
    assert (row.auth_kind, row.auth_env_var) == ("bearer", "OPENAI_API_KEY")


def test_the_server_start_says_when_the_providers_upstream_names_no_key(openai_fake, openai_policy,
                                                                          caplog, monkeypatch):
    from aigen.generation import providers

    monkeypatch.setattr(providers, "_announced", False)
    providers.provider_announce()
    assert "names no credential" not in caplog.text
    openai_policy(auth_kind="none", auth_env_var="")
    monkeypatch.setattr(providers, "_announced", False)
    providers.provider_announce()
    assert "upstream 'openai' names no credential, so OPENAI_API_KEY is not sent" in caplog.text


def test_openai_streaming(openai_fake):
    provider = _provider()
    prompt = _prompt("1")
    stream = provider.stream(prompt)
    chunks = list(stream)
    assert len(chunks) > 1
    assert "".join(chunks) == CONTENT_PREFIX + prompt.messages[-1]["content"]
    assert stream.usage.total_tokens  # include_usage: the last chunk carries it
    assert openai_fake.chat_requests()[0]["stream"] is True


def test_policy_retries_429_and_500_the_sdk_does_not(openai_fake):
    openai_fake.fail_next(Reply(429, retry_after="0"), Reply(500))
    completion = _provider().complete(_prompt())
    assert completion.content.startswith(CONTENT_PREFIX)
    assert openai_fake.chat_calls == 3
    call_log_flush()
    log = CallLog.objects.get(upstream="openai")
    assert log.attempts == 3 and log.status == 200
    assert {h.get("status") for h in log.retries} >= {429, 500}


def test_retries_exhausted_is_a_502(openai_policy, openai_fake):
    openai_policy(retry_total=1)
    openai_fake.fail_next(Reply(503), Reply(503))
    with pytest.raises(ProviderError) as err:
        _provider().complete(_prompt())
    assert err.value.status == 502 and not isinstance(err.value, ProviderUnavailable)
    assert err.value.extra["upstream_status"] == 503
    assert openai_fake.chat_calls == 2


def test_breaker_opens_and_refuses_without_calling(openai_policy, openai_fake):
    openai_policy(retry_total=0, breaker_fail_max=2, breaker_reset_timeout=30)
    openai_fake.fail_next(Reply(500), Reply(500))
    provider = _provider()
    for _ in range(2):
        with pytest.raises(ProviderError):
            provider.complete(_prompt())
    with pytest.raises(ProviderUnavailable) as err:
        provider.complete(_prompt())
    assert err.value.status == 503
    assert 0 < err.value.retry_after <= 30
    assert openai_fake.chat_calls == 2


def test_a_client_error_does_not_trip_the_breaker(openai_policy, openai_fake):
    openai_policy(retry_total=0, breaker_fail_max=1)
    openai_fake.fail_next(Reply(400))
    provider = _provider()
    with pytest.raises(ProviderError) as err:
        provider.complete(_prompt())
    assert err.value.extra["upstream_status"] == 400
    assert provider.complete(_prompt()).content.startswith(CONTENT_PREFIX)


def test_slow_provider_hits_the_deadline(openai_policy, openai_fake):
    openai_policy(retry_total=0, read_timeout=0.2, deadline=0.3)
    openai_fake.fail_next(Reply(200, delay=0.6))
    with pytest.raises(ProviderTimeout) as err:
        _provider().complete(_prompt())
    assert err.value.status == 504


def test_malformed_json_is_a_502(openai_fake):
    openai_fake.fail_next(MALFORMED_JSON)
    with pytest.raises(ProviderError) as err:
        _provider().complete(_prompt())
    assert err.value.status == 502


def test_disabled_upstream_is_unavailable(openai_policy, openai_fake):
    openai_policy(enabled=False)
    with pytest.raises(ProviderUnavailable):
        _provider().complete(_prompt())
    assert openai_fake.chat_calls == 0


def test_changing_the_policy_base_url_moves_the_sdk(openai_fake, openai_policy):
    with FakeUpstream() as other:
        other.script("/elsewhere/chat/completions", Reply(200, body={
            "id": "x", "object": "chat.completion", "created": 0, "model": MODEL_ID,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "from elsewhere"}}],
        }))
        openai_policy(base_url=other.url + "/elsewhere")
        assert _provider().complete(_prompt()).content == "from elsewhere"
    assert openai_fake.chat_calls == 0


# -- the transport ---------------------------------------------------------------------

@pytest.fixture
def api_upstream(db):
    with FakeUpstream() as fake:
        Upstream.objects.create(name="plain", base_url=fake.url + "/base", retry_total=0, cache_ttl=0)
        yield fake


def test_transport_decodes_gzip_and_keeps_query_and_method(api_upstream):
    payload = {"hello": "世界"}
    api_upstream.script("/base/items", Reply(200, body=gzip.compress(json.dumps(payload).encode()),
                                             headers={"Content-Encoding": "gzip",
                                                      "Content-Type": "application/json"}))
    with httpx2.Client(transport=UpstreamTransport("plain"), base_url=SDK_BASE_URL) as client:
        response = client.get("/items", params={"q": "1"}, headers={"X-Test": "yes"})
    assert response.status_code == 200
    assert response.json() == payload
    assert "content-encoding" not in response.headers
    [request] = api_upstream.requests
    assert (request.method, request.path, request.query) == ("GET", "/base/items", "q=1")
    assert request.headers["X-Test"] == "yes"
    assert request.headers["Host"] != "openai.upstream"
