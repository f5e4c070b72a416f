"""No HTML under /v1/ or /api/ (issue 23 L3): the errors Django answers itself
(a route nobody matched, a foreign Host, a failed CSRF check, a crash) and
the schema's 405 come in the route's own JSON shape (project.errors); the
admin keeps its HTML pages."""
from __future__ import annotations

import json

import pytest
from django.test import Client, RequestFactory

from project import errors

pytestmark = pytest.mark.django_db


def _openai_error(response, status: int) -> dict:
    assert response.status_code == status
    assert response["Content-Type"] == "application/json"
    error = json.loads(response.content)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def _our_error(response, status: int) -> dict:
    assert response.status_code == status
    assert response["Content-Type"].startswith("application/json")
    body = json.loads(response.content)
    assert body["success"] is False
    return body["error"]


@pytest.mark.parametrize(("method", "path"), [
    ("get", "/v1"), ("get", "/v1/"), ("get", "/v1/x"), ("get", "/v1/models/"),
    ("post", "/v1/chat/completions/"), ("get", "/v1/chat/completions/x"),
])
def test_unknown_v1_routes_are_openai_404s(method, path):
    assert _openai_error(getattr(Client(), method)(path), 404)["code"] == "unknown_url"


def test_unknown_api_routes_are_our_404s():
    assert _our_error(Client().get("/api/nope/"), 404)["code"] == "not_found"


def test_method_not_allowed_is_json():
    assert _openai_error(Client().post("/v1/models"), 405)["code"] == "method_not_allowed"
    for method, path in (("post", "/api/schema/"), ("put", "/api/schema"), ("delete", "/api/schema/")):
        assert _our_error(getattr(Client(), method)(path), 405)["code"] == "method_not_allowed"
    assert Client().get("/api/schema/").status_code == 200  # the schema itself is still served


def test_a_foreign_host_is_a_json_400_under_the_api():
    foreign = Client().get("/v1/models", HTTP_HOST="evil.example.com")
    assert _openai_error(foreign, 400)["code"] == "bad_request"
    error = _our_error(Client().get("/api/ai/templates", HTTP_HOST="evil.example.com"), 400)
    assert error["code"] == "bad_request" and "evil.example.com" not in error["message"]
    admin = Client().get("/admin/login/", HTTP_HOST="evil.example.com")
    assert admin.status_code == 400 and admin["Content-Type"].startswith("text/html")


def test_a_failed_csrf_check_is_json_under_v1(django_user_model):
    client = Client(enforce_csrf_checks=True)
    client.force_login(django_user_model.objects.create_user("session", is_staff=True))
    # /v1/models is not CSRF-exempt (GET only); a session POST fails the check first.
    error = _openai_error(client.post("/v1/models"), 403)
    assert error["code"] == "csrf_failed"
    page = client.post("/admin/logout/")  # the admin keeps Django's page
    assert page.status_code == 403 and page["Content-Type"].startswith("text/html")


def test_a_crash_is_json_under_the_api():
    factory = RequestFactory()
    crashed = errors.server_error(factory.get("/v1/chat/completions"))
    assert _openai_error(crashed, 500)["type"] == "server_error"
    assert _our_error(errors.server_error(factory.get("/api/ai/generate")), 500)["code"] == "server_error"
    assert errors.server_error(factory.get("/admin/"))["Content-Type"].startswith("text/html")
