"""The REST API: answers, the cache, SSE, and every error status."""
from __future__ import annotations

import json

import pytest
from asgiref.sync import async_to_sync
from django.core.cache import cache
from django.test import AsyncClient

from aigen.generation.records import generation_records_flush
from aigen.models import Generation
from resilience.models import CallLog
from resilience.telemetry.calllog import call_log_flush
from tests.support.fake_openai import CONTENT_PREFIX
from tests.support.fake_upstream import Reply

pytestmark = pytest.mark.django_db

GENERATE = "/api/ai/generate"


def _body(data, template_id="emergency_plan", section_id="2", **extra):
    return {"template_id": template_id, "section_id": section_id, "data": data, **extra}


def _error(response, status, code=None):
    assert response.status_code == status, response.content
    body = response.json()
    assert body["success"] is False
    assert set(body["error"]) >= {"code", "message"}
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


def test_generate_then_cached(api, section2_data, user):
    first = api.post(GENERATE, _body(section2_data), format="json")
    assert first.status_code == 200, first.content
    body = first.json()
    assert body["success"] is True and body["cached"] is False
    assert body["section_title"] == "企业概况"
    assert body["content"].startswith("【模拟内容】")
    assert (body["provider"], body["model"]) == ("mock", "mock-1")
    assert set(body["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}
    assert isinstance(body["latency_ms"], int)

    second = api.post(GENERATE, _body(section2_data), format="json").json()
    assert second["cached"] is True and second["content"] == body["content"]
    generation_records_flush()
    assert list(Generation.objects.values_list("user_id", "cached").order_by("id")) == [
        (user.pk, False), (user.pk, True)]


def test_generate_through_openai_and_section_id_as_number(api, openai_fake, section2_data):
    response = api.post(GENERATE, _body(section2_data, section_id=2), format="json")
    assert response.status_code == 200
    assert response.json()["content"].startswith(CONTENT_PREFIX)
    assert response.json()["provider"] == "openai"
    again = api.post(GENERATE, _body(section2_data, use_cache=False), format="json").json()
    assert again["cached"] is False and openai_fake.chat_calls == 2


def test_the_callers_provider_calls_are_its_own_in_the_call_log(api, user, make_client, openai_fake,
                                                                 section2_data, django_user_model):
    """The call-log rows of a caller's generation carry the caller: it may read
    them without view permission on call logs, and no one else's (L10)."""
    assert api.post(GENERATE, _body(section2_data), format="json").status_code == 200
    other = make_client(django_user_model.objects.create_user("other"))
    assert other.post(GENERATE, _body(section2_data, use_cache=False), format="json").status_code == 200
    call_log_flush()
    assert sorted(CallLog.objects.filter(upstream="openai").values_list("caller_id", flat=True)) == sorted(
        [user.pk, django_user_model.objects.get(username="other").pk])
    mine = api.get("/api/resilience/upstreams/openai/calls").json()["results"]
    assert len(mine) == 1 and mine[0]["method"] == "POST"


def test_token_scheme_and_session_also_work(make_client, user, client, section2_data):
    assert make_client(user, scheme="Token").get("/api/ai/templates").status_code == 200
    client.force_login(user)
    assert client.get("/api/ai/templates").status_code == 200


class _Streamed:
    """A streamed answer read to its end in the event loop that served it (as
    under ASGI: the provider's connections belong to that loop)."""

    def __init__(self, response, content: bytes) -> None:
        self.response, self.content = response, content
        self.status_code = response.status_code

    def __getitem__(self, header: str) -> str:
        return self.response[header]

    def __contains__(self, header: str) -> bool:
        return header in self.response


def _stream(api, body, **headers):
    """POST a streamed generate through Django's AsyncClient with `api`'s credentials."""
    meta = {**api._credentials, **headers}  # HTTP_ACCEPT_ENCODING -> Accept-Encoding
    as_headers = {key.removeprefix("HTTP_").replace("_", "-").title(): value for key, value in meta.items()}

    async def go():
        client = AsyncClient()
        response = await client.post(GENERATE, body, content_type="application/json", headers=as_headers)
        if not response.streaming:
            return _Streamed(response, response.content)
        return _Streamed(response, b"".join([chunk async for chunk in response.streaming_content]))

    return async_to_sync(go)()


def _events(response):
    assert response["Content-Type"].startswith("text/event-stream")
    text = response.content.decode()
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def test_stream_sends_server_sent_events(api, openai_fake, section2_data):
    response = _stream(api, _body(section2_data, stream=True), HTTP_ACCEPT="text/event-stream",
                       HTTP_ACCEPT_ENCODING="gzip, br")
    assert response.status_code == 200
    assert "Content-Encoding" not in response and "no-transform" in response["Cache-Control"]
    events = _events(response)
    assert events[0][0] == "start" and events[0][1]["cached"] is False
    assert events[-1][0] == "done" and events[-1][1]["success"] is True
    deltas = [data["content"] for name, data in events if name == "delta"]
    assert len(deltas) > 1 and "".join(deltas).startswith(CONTENT_PREFIX)
    cached = _events(_stream(api, _body(section2_data, stream=True)))
    assert cached[0][1]["cached"] is True
    assert [d["content"] for n, d in cached if n == "delta"] == ["".join(deltas)]


def test_stream_failure_before_the_first_byte_is_a_json_error(api, openai_policy, openai_fake,
                                                               section2_data):
    openai_policy(enabled=False)
    response = api.post(GENERATE, _body(section2_data, stream=True), format="json")
    _error(response, 503, "provider_unavailable")


def test_a_stream_that_stalls_midway_ends_with_an_error_event(api, openai_policy, openai_fake,
                                                              section2_data):
    openai_policy(retry_total=0, read_timeout=0.2, deadline=2.0)
    openai_fake.fail_next(Reply(200, body_delay=0.5))  # headers at once, then silence
    response = _stream(api, _body(section2_data, stream=True))
    events = _events(response)
    assert [name for name, _ in events] == ["start", "error"]
    assert events[-1][1]["error"]["code"] == "provider_timeout"
    openai_policy()  # back to the usual timeouts: a 0.2 s read is a race on a busy CI box
    assert api.post(GENERATE, _body(section2_data), format="json").json()["cached"] is False
    generation_records_flush()
    assert Generation.objects.filter(stream=True).get().error_code == "provider_timeout"


def test_an_event_stream_only_client_gets_errors_as_an_event(api, section2_data):
    del section2_data["enterprise_info"]["address"]
    response = api.post(GENERATE, _body(section2_data, stream=True), format="json",
                        HTTP_ACCEPT="text/event-stream")
    assert response.status_code == 400
    assert response["Content-Type"].startswith("text/event-stream")
    event, data = response.content.decode().split("\n")[:2]
    assert event == "event: error"
    assert json.loads(data.removeprefix("data: "))["error"]["field"] == "data.enterprise_info.address"


def test_templates_lists_the_registry(api):
    response = api.get("/api/ai/templates")
    assert response.status_code == 200
    body = response.json()
    templates = {t["id"]: t for t in body["templates"]}
    assert {"emergency_plan", "meeting_minutes"} <= set(templates)
    sections = {s["id"]: s for s in templates["emergency_plan"]["sections"]}
    assert list(sections) == ["1", "2", "3", "4", "5"]
    assert "enterprise_info.employees_count" in sections["2"]["required_fields"]
    assert body["provider"] == "mock"


def test_cache_stats(api, section2_data):
    api.post(GENERATE, _body(section2_data), format="json")
    for _ in range(3):
        api.post(GENERATE, _body(section2_data), format="json")
    response = api.get("/api/ai/cache/stats")
    assert response.status_code == 200
    body = response.json()
    assert body["success"] is True and body["backend"] == cache.backend_name
    stats = body["stats"]
    assert (stats["hits"], stats["misses"], stats["sets"]) == (3, 1, 1)
    assert stats["total_requests"] == 4 and stats["hit_rate"] == "75.00%" and stats["hit_ratio"] == 0.75
    assert {"errors", "fallbacks", "deletes"} <= set(stats)


def test_staff_clears_the_ai_cache(staff_api, api, section2_data, sample):
    api.post(GENERATE, _body(section2_data), format="json")
    api.post(GENERATE, _body(section2_data, section_id="1"), format="json")
    api.post(GENERATE, _body(sample("meeting_minutes"), template_id="meeting_minutes", section_id="1"),
             format="json")
    cache.set("http:other:key", "untouched")

    response = staff_api.delete("/api/ai/cache?template_id=emergency_plan")
    assert response.status_code == 200
    assert response.json() == {"success": True, "deleted": 2, "namespace": "ai",
                               "template_id": "emergency_plan"}
    assert staff_api.delete("/api/ai/cache").json()["deleted"] == 1
    assert cache.get("http:other:key") == "untouched"
    assert api.post(GENERATE, _body(section2_data), format="json").json()["cached"] is False
    _error(staff_api.delete("/api/ai/cache?template_id=nope"), 404, "template_not_found")


# -- errors ----------------------------------------------------------------------------

def test_malformed_json_is_400(api):
    response = api.post(GENERATE, data='{"template_id": "emergency_plan",', content_type="application/json")
    _error(response, 400, "parse_error")


@pytest.mark.parametrize(("body", "field"), [
    ({"section_id": "2", "data": {}}, "template_id"),
    ({"template_id": "emergency_plan", "data": {}}, "section_id"),
    ({"template_id": "emergency_plan", "section_id": "2"}, "data"),
    ({"template_id": "emergency_plan", "section_id": "2", "data": []}, "data"),
    ({"template_id": "emergency_plan", "section_id": "2", "data": {}, "use_cache": "maybe"}, "use_cache"),
])
def test_missing_or_mistyped_envelope_fields_are_400(api, body, field):
    error = _error(api.post(GENERATE, body, format="json"), 400, "invalid")
    assert error["field"] == field and field in error["message"]


def test_missing_data_field_is_400_naming_it(api, section2_data):
    del section2_data["enterprise_info"]["address"]
    error = _error(api.post(GENERATE, _body(section2_data), format="json"), 400, "invalid")
    assert error["field"] == "data.enterprise_info.address"


def test_mistyped_data_field_is_400_naming_it(api, section2_data):
    section2_data["enterprise_info"]["employees_count"] = "很多"
    error = _error(api.post(GENERATE, _body(section2_data), format="json"), 400, "invalid")
    assert error["field"] == "data.enterprise_info.employees_count"
    assert "integer" in error["message"]


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_or_infinity_in_data_is_400_naming_the_field(api, section2_data, constant):
    raw = json.dumps(_body({**section2_data, "extra": [{"score": 0.25}]})).replace("0.25", constant)
    error = _error(api.post(GENERATE, data=raw, content_type="application/json"), 400, "invalid")
    assert error["field"] == "data.extra[0].score" and "NaN" in error["message"]


def test_body_over_the_limit_is_413(api, section2_data, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2048
    section2_data["enterprise_info"]["main_products"] = "x" * 4000
    _error(api.post(GENERATE, _body(section2_data), format="json"), 413, "request_too_large")


def test_a_json_list_body_is_400(api):
    _error(api.post(GENERATE, [1, 2], format="json"), 400, "invalid")


def test_unauthenticated_is_401(client, make_client, section2_data):
    response = client.post(GENERATE, _body(section2_data), content_type="application/json")
    _error(response, 401)
    assert response["WWW-Authenticate"].startswith("Bearer")
    bad = make_client()
    bad.credentials(HTTP_AUTHORIZATION="Bearer not-a-token")
    _error(bad.get("/api/ai/cache/stats"), 401)
    _error(client.get("/api/ai/templates"), 401)


def test_non_staff_delete_is_403(api):
    _error(api.delete("/api/ai/cache"), 403)


@pytest.mark.parametrize(("template_id", "section_id", "code"), [
    ("no_such_template", "1", "template_not_found"),
    ("emergency_plan", "42", "section_not_found"),
])
def test_unknown_template_or_section_is_404(api, section2_data, template_id, section_id, code):
    response = api.post(GENERATE, _body(section2_data, template_id=template_id, section_id=section_id),
                        format="json")
    _error(response, 404, code)


def test_throttled_is_429(api, section2_data, settings):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"generate": "2/min"}}
    for _ in range(2):
        assert api.post(GENERATE, _body(section2_data), format="json").status_code == 200
    response = api.post(GENERATE, _body(section2_data), format="json")
    _error(response, 429, "throttled")
    assert int(response["Retry-After"]) > 0
    assert api.get("/api/ai/templates").status_code == 200  # only generate is throttled


def test_breaker_open_is_503_with_retry_after(api, openai_policy, openai_fake, section2_data):
    openai_policy(retry_total=0, breaker_fail_max=2, breaker_reset_timeout=30)
    openai_fake.fail_next(Reply(500), Reply(500))
    for _ in range(2):
        _error(api.post(GENERATE, _body(section2_data), format="json"), 502, "provider_error")
    response = api.post(GENERATE, _body(section2_data), format="json")
    _error(response, 503, "provider_unavailable")
    assert 1 <= int(response["Retry-After"]) <= 30
    assert openai_fake.chat_calls == 2


def test_deadline_is_504(api, openai_policy, openai_fake, section2_data):
    openai_policy(retry_total=0, read_timeout=0.2, deadline=0.3)
    openai_fake.fail_next(Reply(200, delay=0.6))
    _error(api.post(GENERATE, _body(section2_data), format="json"), 504, "provider_timeout")


def test_retries_through_the_api(api, openai_fake, section2_data):
    openai_fake.fail_next(Reply(429, retry_after="0"), Reply(502), Reply(500))
    response = api.post(GENERATE, _body(section2_data), format="json")
    assert response.status_code == 200
    assert openai_fake.chat_calls == 4


def test_wrong_method_and_media_type_are_not_500(api):
    _error(api.get(GENERATE), 405)
    _error(api.post(GENERATE, data="template_id=x", content_type="application/x-www-form-urlencoded"), 415)
