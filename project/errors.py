"""Error answers in the route's own shape, for the errors Django answers itself.

Owns the shape by path: OpenAI's `{"error": {"message", "type", "param",
"code"}}` under `/v1` (what the SDKs parse), the project's `{"success": false,
"error": {"code", "message", ...}}` under `/api`; everything else (the admin,
the dashboard) keeps Django's HTML pages. `project.urls` installs the
handlers (400, 403, 404, 500) and settings.CSRF_FAILURE_VIEW the CSRF one, so
no page under `/v1/` or `/api/` is ever HTML: a route nobody matched, a
foreign `Host` (400), a failed CSRF check (403), a crash (500). The door
(project.door) answers its 413 from here too. The bodies themselves come
from the one renderer, aigen.edge.errors.

Messages never echo the request's host or body (a 400 for a foreign Host does
not repeat it). These views cannot fail: they build JSON from constants and
the request's method and path.
"""
from __future__ import annotations

import json
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.views import defaults
from django.views.csrf import csrf_failure as django_csrf_failure

from aigen.edge.errors import ANTHROPIC, OPENAI, OURS, error_body
from resilience.exceptions import Refusal

_SHAPES = {"anthropic": ANTHROPIC, "openai": OPENAI, "api": OURS}


def route_shape(path: str) -> str | None:
    """`anthropic` under /v1/messages, `openai` elsewhere under /v1, `api`
    under /api, None elsewhere (Django's pages)."""
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        return "anthropic"
    if path == "/v1" or path.startswith("/v1/"):
        return "openai"
    if path == "/api" or path.startswith("/api/"):
        return "api"
    return None


def error_payload(path: str, *, status: int, code: str, message: str, **extra: Any) -> dict[str, Any]:
    """The error body for `path`: Anthropic's under /v1/messages, OpenAI's
    elsewhere under /v1, the project's elsewhere (rendered by aigen.edge.errors)."""
    shape = _SHAPES.get(route_shape(path) or "api", OURS)
    return error_body(Refusal(code, message, status, **extra), shape=shape)


def error_response(request: HttpRequest, *, status: int, code: str, message: str) -> HttpResponse:
    body = json.dumps(error_payload(request.path_info, status=status, code=code, message=message))
    return HttpResponse(body, status=status, content_type="application/json")


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if route_shape(request.path_info) is None:
        return defaults.bad_request(request, exception)
    return error_response(request, status=400, code="bad_request", message="Bad request (the Host header "
                          "is not served here, or the request is malformed).")


def permission_denied(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if route_shape(request.path_info) is None:
        return defaults.permission_denied(request, exception)
    return error_response(request, status=403, code="permission_denied",
                          message="You do not have permission to perform this action.")


def page_not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if route_shape(request.path_info) is None:
        return defaults.page_not_found(request, exception)
    code = "not_found" if route_shape(request.path_info) == "api" else "unknown_url"
    # The path is the caller's own, echoed as JSON text (never markup).
    return error_response(request, status=404, code=code,
                          message=f"No route {request.method} {request.path_info[:200]}.")


def server_error(request: HttpRequest) -> HttpResponse:
    if route_shape(request.path_info) is None:
        return defaults.server_error(request)
    return error_response(request, status=500, code="server_error", message="The server failed to answer.")


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    if route_shape(request.path_info) is None:
        return django_csrf_failure(request, reason)
    return error_response(request, status=403, code="csrf_failed",
                          message=f"CSRF check failed: {reason or 'no valid token'}.")
