"""Every /api/ route answers bad requests in the shared error shape: deep
nesting is a 400 `parse_error` (not a 500), oversized bodies a 413, unknown
routes a JSON 404, and a trailing slash is accepted either way."""
from __future__ import annotations

import json
import re

import pytest
from django.test import Client

from aigen.edge.tokens import token_issue
from tests.resilience.ops.test_schema import api_routes
from tests.support.roles import role_user

pytestmark = pytest.mark.django_db

DEEP = "[" * 5000 + "]" * 5000  # 10 KB, nested 5,000 levels


@pytest.fixture
def staff() -> Client:
    user = role_user("operator", username="ops")  # staff with view and change permissions
    return Client(headers={"Authorization": f"Bearer {token_issue(user=user)}"})


def shared_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["success"] is False and body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


def concrete(path: str) -> str:
    return re.sub(r"\{\w+\}", "missing", path)


@pytest.mark.parametrize("path", ["/api/ai/generate", "/api/ai/jobs", "/api/ai/cache"])
def test_deep_nesting_is_a_400_parse_error(staff, path):
    method = staff.delete if path == "/api/ai/cache" else staff.post
    error = shared_error(method(path, DEEP, content_type="application/json"), 400, "parse_error")
    assert "nested too deeply" in error["message"]


def test_no_route_answers_deep_nesting_or_a_big_body_with_a_500(staff, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 4096
    big = json.dumps({"data": "x" * 5000})
    checked = 0
    for path, pattern in api_routes():
        view = getattr(pattern.callback, "cls", None)
        for method in ("post", "put", "patch", "delete"):
            if view is None or not hasattr(view, method):
                continue
            send = getattr(staff, method)
            deep = send(concrete(path), DEEP, content_type="application/json")
            assert deep.status_code < 500 and deep["Content-Type"].startswith("application/json"), path
            large = send(concrete(path), big, content_type="application/json")
            assert large.status_code < 500 and large.status_code != 400, (path, large.content[:200])
            checked += 1
    assert checked >= 5


@pytest.mark.parametrize("path", ["/api/ai/generate", "/api/ai/jobs"])
def test_an_oversized_body_is_a_413(staff, settings, path):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2048
    body = json.dumps({"template_id": "emergency_plan", "section_id": "2", "data": {"x": "y" * 4000}})
    error = shared_error(staff.post(path, body, content_type="application/json"), 413, "request_too_large")
    assert "2048" in error["message"]


@pytest.mark.parametrize("path", ["/api", "/api/", "/api/nope", "/api/resilience/nope/",
                                  "/api/ai/templates/extra"])
def test_unknown_api_routes_are_json_404s(staff, client, path):
    shared_error(staff.get(path), 404, "not_found")
    shared_error(client.post(path, "{}", content_type="application/json"), 404, "not_found")


def test_pages_outside_the_api_keep_django_s_404(client):
    assert client.get("/no-such-page").status_code == 404


@pytest.mark.parametrize(("asked", "served"), [
    ("/api/schema", "/api/schema/"),
    ("/api/resilience/upstreams/", "/api/resilience/upstreams"),
    ("/api/ai/templates/", "/api/ai/templates"),
    ("/api/ai/cache/stats/", "/api/ai/cache/stats"),
])
def test_a_trailing_slash_is_accepted_either_way(staff, asked, served):
    both = staff.get(asked), staff.get(served)
    assert [r.status_code for r in both] == [200, 200]
    assert both[0].content == both[1].content


def test_a_delete_with_a_trailing_slash_reaches_its_view(staff, client):
    response = staff.delete("/api/ai/cache/")
    assert response.status_code == 200 and response.json()["success"] is True
    shared_error(client.delete("/api/ai/cache/"), 401)  # the view's own authentication still applies


def test_the_schema_documents_413_and_parse_errors_for_every_body():
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    with_body = [(path, op) for path, item in schema["paths"].items() for op in item.values()
                 if isinstance(op, dict) and "requestBody" in op]
    assert any(path == "/api/ai/generate" for path, _ in with_body)
    for path, operation in with_body:
        assert {"400", "413"} <= set(operation["responses"]), path


def test_the_async_generate_view_takes_a_trailing_slash_too(staff, settings):
    settings.AIGEN = {**settings.AIGEN, "OPENAI_API_KEY": ""}  # the mock provider
    body = {"template_id": "emergency_plan", "section_id": "2",
            "data": {"enterprise_info": {"enterprise_name": "示例化工有限公司", "industry_type": "化工",
                                         "address": "南京", "main_products": "涂料", "employees_count": 3}}}
    response = staff.post("/api/ai/generate/", body, content_type="application/json")
    assert response.status_code == 200, response.content[:300]
    assert response.json()["success"] is True and response.json()["content"]


def test_the_favicon_is_served_not_a_404(client):
    redirect = client.get("/favicon.ico")
    assert redirect.status_code == 301
    icon = client.get(redirect["Location"])
    assert icon.status_code == 200 and b"".join(icon.streaming_content)[:4] == b"\x00\x00\x01\x00"
