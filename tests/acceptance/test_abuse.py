"""Abuse, from outside (the production server, `live`) and inside (the
URLconf, the client): bodies too big, too deep or not UTF-8, huge headers,
path traversal in every path parameter of the schema, header injection in
upstream paths and in X-Request-ID, token guessing, a non-staff user on
every staff route. What holds: a 4xx in the shared JSON error shape (or
uvicorn's own refusal before Django for malformed HTTP), never a 5xx, never
a reply the caller may not have, and the server keeps serving."""
from __future__ import annotations

import http.client
import json
import re
import socket
from typing import Any

import pytest
import requests
from asgiref.sync import async_to_sync
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import AsyncClient, Client
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.permissions import IsAdminUser
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory

from aigen.edge.tokens import token_issue
from resilience import upstream
from resilience.client import reset_clients
from resilience.exceptions import InvalidUpstreamPath, UpstreamError
from resilience.models import Upstream
from resilience.ops.permissions import AdminPermission
from resilience.ops.throttling import AuthFailureThrottle
from tests.support.fake_upstream import FakeUpstream

SANE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _is_json_error(response: requests.Response) -> bool:
    try:
        body = response.json()
    except ValueError:
        return False
    return body.get("success") is False and isinstance(body.get("error", {}).get("code"), str)


def _assert_refused(response: requests.Response, *statuses: int) -> None:
    assert response.status_code in statuses, (response.status_code, response.text[:500])
    assert response.headers["Content-Type"].startswith("application/json"), response.headers
    assert _is_json_error(response), response.text[:500]


def _still_serving(live) -> None:
    assert requests.get(f"{live.url}/healthz", timeout=10).status_code == 200


# -- bodies ----------------------------------------------------------------------------------------
BODY_ROUTES = ["/api/ai/generate", "/api/ai/jobs"]


@pytest.mark.parametrize("path", BODY_ROUTES)
def test_oversized_deep_and_non_utf8_bodies_are_refused_in_the_error_shape(live, path, exposure):
    headers = {**live.headers(), "Content-Type": "application/json"}
    limit = 256 * 1024
    cases = {
        "oversized": (json.dumps({"template_id": "x" * (limit + 10)}).encode(), (413,)),
        "deep_nesting": (b"[" * 50_000 + b"]" * 50_000, (400,)),
        "deep_objects": (b'{"a":' * 20_000 + b"1" + b"}" * 20_000, (400,)),
        "invalid_utf8": (b'{"template_id": "\xff\xfe\xfd", "section_id": "1", "data": {}}', (400,)),
        "lone_surrogate": (b'{"template_id": "\\ud800", "section_id": "1", "data": {}}', (400,)),
        "lone_surrogate_deep": (
            b'{"template_id": "meeting_minutes", "section_id": "1", "data": {"x": ["\\udfff"]}}', (400,)),
        # PostgreSQL cannot store NUL in text or jsonb: refused or ignored, never a 500.
        "nul_in_strings": (b'{"template_id": "a\\u0000b", "section_id": "1", "data": {"x": "\\u0000"}}',
                           (400, 404)),
        "not_json": (b"\x00\x01\x02 not json", (400,)),
    }
    for name, (body, statuses) in cases.items():
        response = requests.post(f"{live.url}{path}", data=body, headers=headers, timeout=30)
        exposure.add_response(f"abuse body {name} {path}", response)
        _assert_refused(response, *statuses)
    _still_serving(live)


def test_huge_and_many_headers_never_reach_a_5xx(live):
    huge = {**live.headers(), "X-Padding": "a" * 200_000}
    try:
        response = requests.get(f"{live.url}/api/ai/templates", headers=huge, timeout=30)
        assert response.status_code < 500 or response.status_code == 431, response.status_code
    except requests.ConnectionError:
        pass  # uvicorn may close the connection on a header block past its limit: refused, not served
    many = {**live.headers(), **{f"X-H{i}": "v" * 100 for i in range(2000)}}
    try:
        response = requests.get(f"{live.url}/api/ai/templates", headers=many, timeout=30)
        assert response.status_code < 500, response.status_code
    except requests.ConnectionError:
        pass
    _still_serving(live)


def test_invalid_utf8_in_path_and_query_is_a_4xx(live):
    for target in ["/api/resilience/upstreams/%ff%fe", "/api/resilience/upstreams/openai/calls?since=%ff",
                   "/api/ai/jobs/%c0%ae%c0%ae", "/api/%ff", "/api/resilience/upstreams/openai/calls?page=%00",
                   "/api/resilience/upstreams/openai/calls?outcome=%00"]:
        response = requests.get(f"{live.url}{target}", headers=live.headers(staff=True), timeout=30)
        _assert_refused(response, 400, 404)
    _still_serving(live)


# -- path parameters -------------------------------------------------------------------------------
TRAVERSAL = ["..", "../..", "..%2f..%2fadmin", "%2e%2e", "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "....//....//",
             "..\\..\\", "%5c..%5c..", "%00", "openai%00", "openai/../openai", ".%2e/.%2e/",
             "%252e%252e%252f", "//evil.example", "openai%0d%0aX-Injected:%201", "~root", "*", "openai;rm"]


def _operations(live) -> list[tuple[str, str, list[str]]]:
    schema = requests.get(f"{live.url}/api/schema/?format=json", timeout=30).json()
    found = []
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            names = [p["name"] for p in operation.get("parameters", ()) if p.get("in") == "path"]
            if names:
                found.append((method.upper(), path, names))
    return found


def _raw(live, method: str, target: str, headers: dict[str, str]) -> tuple[int, bytes]:
    """One request with the target sent byte for byte (requests would normalise `..` away)."""
    conn = http.client.HTTPConnection("127.0.0.1", live.server.port, timeout=30)
    try:
        conn.request(method, target, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_path_traversal_in_every_path_parameter(live, exposure):
    operations = _operations(live)
    assert operations, "the schema has no operation with a path parameter"
    before = len(live.upstream.requests)
    for staff in (False, True):
        for method, path, names in operations:
            for payload in TRAVERSAL:
                target = path
                for name in names:
                    target = target.replace("{" + name + "}", payload)
                status, body = _raw(live, method, target, live.headers(staff=staff))
                exposure.add(f"traversal {method} {target}", body)
                # Refused (404, or 400/403/405 from a route that matched after all), never a 5xx;
                # under /api/ always in the shared JSON shape (pages elsewhere may answer HTML).
                assert status in (400, 403, 404, 405), (method, target, status, body[:300])
                if not target.startswith("/api/"):
                    continue
                try:
                    error = json.loads(body)
                except ValueError:
                    raise AssertionError((method, target, status, body[:300])) from None
                assert error["success"] is False and error["error"]["code"], body[:300]
    # Nothing of it reached an upstream.
    assert len(live.upstream.requests) == before
    _still_serving(live)


# -- request ids -----------------------------------------------------------------------------------
def test_x_request_id_injection_is_replaced_not_echoed(live):
    hostile = ["a" * 65, "abc def", "<script>alert(1)</script>", "id%0d%0aSet-Cookie:%20x=1", "../../etc",
               "\u00e9t\u00e9", "x;y", "a\tb"]
    for value in hostile:
        conn = http.client.HTTPConnection("127.0.0.1", live.server.port, timeout=30)
        try:
            conn.putrequest("GET", "/api/ai/templates", skip_accept_encoding=True)
            conn.putheader("Authorization", live.headers()["Authorization"])
            conn.putheader("X-Request-ID", value.encode("utf-8"))
            conn.endheaders()
            response = conn.getresponse()
            response.read()
            echoed = response.getheader("X-Request-ID")
            assert response.status == 200
            assert echoed and SANE_ID.fullmatch(echoed) and echoed != value
            assert response.getheader("Set-Cookie") is None
        finally:
            conn.close()
    # A raw CR/LF in the header block is malformed HTTP: refused before Django, server unharmed.
    with socket.create_connection(("127.0.0.1", live.server.port), timeout=30) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Request-ID: a\rInjected: 1\r\n\r\n")
        reply = sock.recv(65536)
    assert not reply or reply.startswith(b"HTTP/1.1 4"), reply[:200]
    _still_serving(live)


# -- header injection into upstream calls ----------------------------------------------------------
@pytest.mark.django_db
def test_header_injection_never_reaches_an_upstream():
    with FakeUpstream() as fake:
        Upstream.objects.create(name="inject", base_url=fake.url, log_sample_rate=1.0, retry_total=0)
        reset_clients()
        client = upstream("inject")
        for path in ["/a\r\nX-Injected: 1", "/a\nX-Injected: 1", "/a\rX-Injected: 1",
                     "/a?q=1\r\nX-Injected: 1", "/a\x00b", "/a HTTP/1.1\r\nHost: evil"]:
            with pytest.raises(InvalidUpstreamPath):
                client.get(path, cache=False)
        # Encoded, the same bytes are a path, not a header.
        client.get("/a%0d%0aX-Injected:%201", cache=False)
        for value in ["v\r\nX-Injected: 1", "v\nX-Injected: 1"]:
            with pytest.raises((UpstreamError, ValueError)):
                client.get("/b", headers={"X-Custom": value}, cache=False)
        assert fake.requests, "the encoded path should have reached the upstream"
        for recorded in fake.requests:
            assert "X-Injected" not in recorded.headers
            assert "evil" not in recorded.headers.get("Host", "")


# -- token guessing --------------------------------------------------------------------------------
@pytest.fixture
def guessing_clock(monkeypatch):
    now = {"t": 1_000_020.0}
    monkeypatch.setattr(AuthFailureThrottle, "timer", staticmethod(lambda: now["t"]))
    return now


@pytest.mark.django_db
def test_token_guessing_is_throttled_per_address(django_user_model, guessing_clock, settings):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {
        **settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], "auth_failure": "10/min"}}
    user = django_user_model.objects.create_user("guessed")
    key = token_issue(user=user)
    attacker = Client(REMOTE_ADDR="203.0.113.7")
    statuses = [attacker.get("/api/ai/templates", HTTP_AUTHORIZATION=f"Bearer {i:040x}").status_code
                for i in range(15)]
    assert statuses[:10] == [401] * 10 and statuses[10:] == [429] * 5, statuses
    blocked = attacker.get("/api/ai/templates", HTTP_AUTHORIZATION=f"Token {'f' * 40}")
    assert blocked.status_code == 429 and int(blocked["Retry-After"]) >= 1
    assert blocked.json()["error"]["code"] == "throttled"
    # X-Forwarded-For is the caller's to write: it buys no fresh bucket.
    spoofed = attacker.get("/api/ai/templates", HTTP_AUTHORIZATION=f"Bearer {'e' * 40}",
                           HTTP_X_FORWARDED_FOR="10.9.9.9")
    assert spoofed.status_code == 429
    # A valid token behind the same address is never refused by the failure throttle (L4).
    assert attacker.get("/api/ai/templates", HTTP_AUTHORIZATION=f"Token {key}").status_code == 200
    assert attacker.get("/api/ai/templates", HTTP_AUTHORIZATION=f"Bearer {key}").status_code == 200
    # Someone else is not throttled, and the guesser is let back in when the window passes.
    assert Client(REMOTE_ADDR="198.51.100.1").get(
        "/api/ai/templates", HTTP_AUTHORIZATION=f"Bearer {'d' * 40}").status_code == 401
    guessing_clock["t"] += 60
    assert attacker.get("/api/ai/templates", HTTP_AUTHORIZATION=f"Bearer {'c' * 40}").status_code == 401


@pytest.mark.django_db(transaction=True)
def test_token_guessing_on_the_async_generate_view_is_throttled_too(guessing_clock, settings):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {
        **settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], "auth_failure": "5/min"}}
    attacker = AsyncClient()  # the ASGI scope's client address: 127.0.0.1

    async def guess(i: int) -> Any:
        return await attacker.post("/api/ai/generate", data={}, content_type="application/json",
                                   headers={"Authorization": f"Bearer {i:040x}"})

    responses = [async_to_sync(guess)(i) for i in range(8)]
    assert [r.status_code for r in responses] == [401] * 5 + [429] * 3
    assert responses[0].json()["error"]["code"] == "authentication_failed"
    assert int(responses[-1]["Retry-After"]) >= 1
    # The same address with a valid token gets past authentication (400: the empty body).
    key = token_issue(user=get_user_model().objects.create_user("valid"))
    valid = async_to_sync(attacker.post)("/api/ai/generate", data={}, content_type="application/json",
                                         headers={"Authorization": f"Bearer {key}"})
    assert valid.status_code == 400, valid.content


# -- staff routes ----------------------------------------------------------------------------------
#: Routes anyone may call (they expose no data); every other route needs a user.
PUBLIC = {"healthz", "readyz", "metrics", "api/schema/", "api/docs/", "admin/login/", "admin/logout/",
          "favicon.ico"}
#: Non-DRF routes under these prefixes are staff-only (Django's admin, the dashboard).
STAFF_PREFIXES = ("admin/", "dashboard/")
METHODS = ("get", "post", "put", "patch", "delete")


def _routes() -> list[tuple[str, Any]]:
    def walk(patterns: list[Any], prefix: str) -> Any:
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                yield from walk(pattern.url_patterns, prefix + str(pattern.pattern))
            elif isinstance(pattern, URLPattern):
                yield prefix + str(pattern.pattern), pattern.callback
    return list(walk(get_resolver().url_patterns, ""))


def _concrete(route: str) -> str | None:
    """A path for a route: converters filled with the seeded `openai` upstream's name or an id;
    regex routes (the admin's internals) are left to the admin's own index check."""
    if "^" in route or "(?P" in route:
        return None
    path = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: "openai" if m.group(1) == "name" else "0", route)
    return "/" + path


def _staff_methods(callback: Any) -> set[str]:
    cls = getattr(callback, "cls", None)
    if cls is None:
        return set()
    found = set()
    for method in METHODS:
        if not hasattr(cls, method):
            continue
        view = cls(**(getattr(callback, "initkwargs", None) or {}))
        view.request = Request(getattr(APIRequestFactory(), method)("/"))
        view.args, view.kwargs, view.format_kwarg = (), {}, None
        if any(isinstance(p, (IsAdminUser, AdminPermission)) for p in view.get_permissions()):
            found.add(method)
    return found


@pytest.mark.django_db
def test_every_staff_route_refuses_a_non_staff_user_and_every_route_an_anonymous_one(django_user_model):
    from django.core.management import call_command

    call_command("seed_upstreams", stdout=open("/dev/null", "w"))  # noqa: SIM115
    user = django_user_model.objects.create_user("plain", password="pw-plain-1")
    # Staff routes ask model permissions too (resilience.ops.permissions; the matrix of roles is in
    # tests/resilience/ops/test_permissions.py): a superuser holds them all.
    staff = django_user_model.objects.create_superuser("boss", password="pw-boss-1")
    plain = Client(HTTP_AUTHORIZATION=f"Bearer {token_issue(user=user)}")
    boss = Client(HTTP_AUTHORIZATION=f"Bearer {token_issue(user=staff)}")
    session = Client()
    session.force_login(user)
    anonymous = Client()

    staff_checked, auth_checked = [], []
    for route, callback in _routes():
        path = _concrete(route)
        if path is None or route in PUBLIC or route.startswith(("static/", "demo/")):
            continue
        staff_methods = _staff_methods(callback)
        if getattr(callback, "cls", None) is not None:
            for method in staff_methods:
                response = getattr(plain, method)(path, content_type="application/json")
                assert response.status_code == 403, (method, path, response.status_code)
                assert response.json()["error"]["code"] == "permission_denied"
                allowed = getattr(boss, method)(path, content_type="application/json")
                assert allowed.status_code != 403, (method, path)  # staff get past the permission
                staff_checked.append(f"{method.upper()} {path}")
            for method in (m for m in METHODS if hasattr(callback.cls, m)):
                response = getattr(anonymous, method)(path, content_type="application/json")
                assert response.status_code == 401, (method, path, response.status_code)
                auth_checked.append(f"{method.upper()} {path}")
        elif route.startswith(STAFF_PREFIXES):
            response = session.get(path)
            assert response.status_code in (302, 403), (path, response.status_code)
            if response.status_code == 302:
                assert response["Location"].startswith(settings.LOGIN_URL), response["Location"]
            staff_checked.append(f"GET {path} (session)")
        else:
            # A route that is neither DRF nor staff nor public must still refuse an anonymous caller.
            response = anonymous.post(path, data="{}", content_type="application/json")
            assert response.status_code in (401, 403, 405), (path, response.status_code)
            auth_checked.append(f"POST {path}")
    # The admin itself (its routes are regexes): a non-staff session is sent to the login page.
    response = session.get("/admin/")
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
    api_staff = sorted(r for r in staff_checked if r.split()[1].startswith("/api/"))
    print(f"staff routes checked: {len(staff_checked)}; under /api/: {api_staff}")
    print(f"authenticated routes checked ({len(auth_checked)})")
    known = {"POST /api/resilience/upstreams/openai/breaker/reset", "DELETE /api/ai/cache"}
    assert known <= set(staff_checked)
