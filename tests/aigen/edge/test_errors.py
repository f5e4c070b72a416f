"""One error path, walked: a real fake provider fails in each way a provider
fails, and every front door answers in its caller's shape, from the one
renderer (aigen.edge.errors), with the status and `Retry-After` the failure
calls for. The failure changes type at most twice on the way: the provider's
answer or the transport's error becomes an `UpstreamError` kind (or the
provider's own error answer, parsed once), and that becomes the body."""
from __future__ import annotations

import pytest
from django.test import Client

from aigen.edge import openai as openai_views
from aigen.edge.errors import ANTHROPIC, OPENAI, OURS, Refusal, api_exception_handler, error_body, error_event
from aigen.edge.tokens import token_issue
from aigen.edge.tokens import users as token_users
from resilience.client import reset_clients
from resilience.client.breaker import SharedBreaker
from resilience.exceptions import BreakerOpen, UpstreamTimeout
from resilience.models import Upstream
from tests.aigen.conftest import SECTION_2
from tests.support.fake_openai import MALFORMED_JSON, MODEL_ID
from tests.support.fake_openai import error_body as openai_error
from tests.support.fake_upstream import Reply
from tests.support.redis_server import free_port

pytestmark = pytest.mark.django_db

FAILURES = {
    "429 with Retry-After": Reply(429, body=openai_error(429, "slow down"), retry_after="7"),
    "429 without Retry-After": Reply(429, body=openai_error(429, "slow down")),
    "500": Reply(500, body=openai_error(500, "the provider broke")),
    "timeout": Reply(delay=1.0, body=b"{}", headers={"Content-Type": "application/json"}),
    "malformed body": MALFORMED_JSON,
    "connection refused": None,  # the upstream's port is closed
}


@pytest.fixture
def doors(openai_fake, openai_policy, user, settings):
    """The three front doors of one `openai` upstream that does not retry
    (one failure is one answer), with a caller's key."""
    settings.AIGEN = {**settings.AIGEN, "GENERATE_THROTTLE": "100000/min"}
    openai_policy(retry_total=0, read_timeout=0.3, breaker_enabled=False, served_models=[MODEL_ID])
    openai_views.models.clear()
    token_users.clear()
    return Client(headers={"Authorization": f"Bearer {token_issue(user=user)}", "x-api-key": ""})


def _fail(fake, how: str) -> None:
    reply = FAILURES[how]
    if reply is None:
        Upstream.objects.filter(name="openai").update(base_url=f"http://127.0.0.1:{free_port()}/v1")
        reset_clients()
    else:
        fake.fail_next(reply)


def _ask(client: Client, door: str):
    if door == OURS:
        return client.post("/api/ai/generate", {"template_id": "emergency_plan", "section_id": "2",
                                                "data": SECTION_2, "use_cache": False},
                           content_type="application/json")
    if door == OPENAI:
        return client.post("/v1/chat/completions", {"model": MODEL_ID, "messages": [
            {"role": "user", "content": "hello"}]}, content_type="application/json")
    return client.post("/v1/messages", {"model": MODEL_ID, "max_tokens": 10, "messages": [
        {"role": "user", "content": "hello"}]}, content_type="application/json")


def _shape(door: str, response) -> tuple[str | None, str]:
    """(code or type, message) of an error answer, asserting its shape is the door's."""
    assert response["Content-Type"].startswith("application/json"), response.content[:200]
    body = response.json()
    if door == OURS:
        assert body["success"] is False and {"code", "message"} <= set(body["error"]), body
        return body["error"]["code"], body["error"]["message"]
    if door == OPENAI:
        assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
        return body["error"]["code"], body["error"]["message"]
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, body
    return body["error"]["type"], body["error"]["message"]


#: (door, failure) -> (status, code or Anthropic type, Retry-After)
EXPECTED = {
    (OURS, "429 with Retry-After"): (502, "provider_error", "7"),
    (OURS, "429 without Retry-After"): (502, "provider_error", None),
    (OURS, "500"): (502, "provider_error", None),
    (OURS, "timeout"): (504, "provider_timeout", None),
    (OURS, "malformed body"): (502, "provider_error", None),
    (OURS, "connection refused"): (502, "provider_error", None),
    # The OpenAI door passes an OpenAI provider's own error answer on as it is.
    (OPENAI, "429 with Retry-After"): (429, "rate_limit_exceeded", "7"),
    (OPENAI, "429 without Retry-After"): (429, "rate_limit_exceeded", None),
    (OPENAI, "500"): (500, None, None),
    (OPENAI, "timeout"): (504, "upstream_timeout", None),
    (OPENAI, "malformed body"): (502, "provider_error", None),
    (OPENAI, "connection refused"): (502, "upstream_connection_error", None),
    (ANTHROPIC, "429 with Retry-After"): (429, "rate_limit_error", "7"),
    (ANTHROPIC, "429 without Retry-After"): (429, "rate_limit_error", None),
    (ANTHROPIC, "500"): (500, "api_error", None),
    (ANTHROPIC, "timeout"): (504, "timeout_error", None),
    (ANTHROPIC, "malformed body"): (502, "api_error", None),
    (ANTHROPIC, "connection refused"): (502, "api_error", None),
}


@pytest.mark.parametrize("how", list(FAILURES))
@pytest.mark.parametrize("door", [OURS, OPENAI, ANTHROPIC])
def test_each_provider_failure_reaches_each_door_in_its_shape(doors, openai_fake, door, how):
    _fail(openai_fake, how)
    response = _ask(doors, door)
    status, code, retry_after = EXPECTED[door, how]
    assert response.status_code == status, response.content[:300]
    assert _shape(door, response)[0] == code
    assert response.get("Retry-After") == retry_after
    assert "sk-test-key" not in response.content.decode()


@pytest.mark.parametrize("door, status, code", [
    (OURS, 503, "provider_unavailable"), (OPENAI, 503, "breaker_open"), (ANTHROPIC, 529, "overloaded_error")])
def test_an_open_breaker_is_a_wait_with_retry_after_at_each_door(doors, openai_fake, openai_policy, door,
                                                                   status, code):
    openai_policy(retry_total=0, breaker_enabled=True, served_models=[MODEL_ID])
    assert SharedBreaker("openai").force_open(seconds=30, by="test")
    response = _ask(doors, door)
    assert response.status_code == status, response.content[:300]
    assert _shape(door, response)[0] == code
    assert 1 <= int(response["Retry-After"]) <= 30
    assert openai_fake.chat_calls == 0  # refused without trying


@pytest.mark.parametrize("door", [OURS, OPENAI, ANTHROPIC])
def test_a_refusal_at_the_door_is_in_its_shape_too(doors, door):
    response = Client().post({OURS: "/api/ai/generate", OPENAI: "/v1/chat/completions",
                              ANTHROPIC: "/v1/messages"}[door], {}, content_type="application/json")
    assert response.status_code == 401
    _shape(door, response)


def test_a_broken_stream_ends_with_one_event_in_the_callers_shape():
    err = UpstreamTimeout("openai: the stream went silent", upstream="openai")
    assert error_event(err, shape=OPENAI) == (
        b'data: {"error": {"message": "openai: the stream went silent", "type": "server_error", '
        b'"param": null, "code": "upstream_timeout"}}\n\n')
    assert error_event(err, shape=ANTHROPIC).startswith(b'event: error\ndata: {"type":"error","error":'
                                                        b'{"type":"timeout_error"')
    assert error_event(err, shape=OURS).startswith(b'event: error\ndata: {"success":false,"error":'
                                                   b'{"code":"upstream_timeout"')


def test_an_overloaded_upstream_is_anthropics_529_and_its_own_status_elsewhere():
    err = BreakerOpen("open", upstream="llm", retry_after=3)
    assert error_body(err, shape=ANTHROPIC)["error"]["type"] == "overloaded_error"
    assert error_body(err, shape=OPENAI)["error"] == {
        "message": "open", "type": "server_error", "param": None, "code": "breaker_open"}
    assert error_body(Refusal("throttled", "slow", 429), shape=OPENAI)["error"]["type"] == "requests"


def test_the_drf_routes_under_api_ai_render_through_the_same_renderer(db):
    from aigen.urls import urlpatterns

    drf_views = [p.callback.cls for p in urlpatterns if getattr(p.callback, "cls", None) is not None]
    assert drf_views and all(view().get_exception_handler() is api_exception_handler for view in drf_views)
    response = Client().post("/api/ai/jobs", {}, content_type="application/json")
    assert response.status_code == 401 and response["WWW-Authenticate"] == 'Bearer realm="api"'
    assert _shape(OURS, response)[0] == "not_authenticated"
    # A client that accepts only events hears of any error as one event (here: DRF's 406).
    only_events = Client(headers={"Accept": "text/event-stream"}).get("/api/ai/templates")
    assert only_events.status_code == 406
    assert only_events.content.startswith(b'event: error\ndata: {"success":false,"error":'
                                          b'{"code":"not_acceptable"')
