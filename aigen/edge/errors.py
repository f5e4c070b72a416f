"""Every error body the AI edge answers, from one renderer, in the caller's shape.

An error reaches this module as an `AppError` kind (its `code`, `message`,
`status`, `retry_after` and `extra`); `error_response(err, shape=...)` renders it:

- `OURS` (/api/ai/...): `{"success": false, "error": {"code", "message", ...}}`,
  or one `error` server-sent event for a client that accepts only
  text/event-stream;
- `OPENAI` (/v1/chat/completions, /v1/models):
  `{"error": {"message", "type", "param", "code"}}`;
- Anthropic's shape (/v1/messages) is added here by the Messages front door,
  as one more renderer in `_RENDERERS`, so its views render through the same
  `error_response`.

`Refusal` is the edge's own `AppError` for what it decides before any work
(authentication, CSRF, throttling, media type, method, parse errors). Every
response is marked as already logged: an answered error is counted (metrics,
call logs), not logged line by line, since under overload django.request
would log every 503 through a thread hop.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse

from resilience.exceptions import AppError

OURS = "ours"
OPENAI = "openai"


class Refusal(AppError):
    """An answer the edge decides before the view's work."""

    def __init__(self, code: str | None, message: str, status: int, *, retry_after: float | None = None,
                 www_authenticate: bool = False, allow: str | None = None, **extra: Any) -> None:
        super().__init__(message, **extra)
        self.code, self.status, self.retry_after = code, status, retry_after
        self.www_authenticate, self.allow = www_authenticate, allow


def sse(event: str, data: Any) -> bytes:
    """One server-sent event. Bytes, not text: each chunk then passes Django's
    streaming wrappers without a charset lookup per chunk."""
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()


def _wants_events_only(request: HttpRequest | None) -> bool:
    """A client that accepts text/event-stream and no JSON gets errors as one event."""
    accept = request.headers.get("Accept", "") if request is not None else ""
    return "text/event-stream" in accept and "json" not in accept and "*/*" not in accept


def _ours(err: AppError, request: HttpRequest | None) -> HttpResponse:
    body = {"success": False, "error": err.as_dict()}
    if _wants_events_only(request):
        return HttpResponse(sse("error", body), status=err.status,
                            content_type="text/event-stream; charset=utf-8")
    return JsonResponse(body, status=err.status, json_dumps_params={"ensure_ascii": False})


def openai_body(message: str, *, code: str | None, kind: str | None = None, param: str | None = None,
                status: int = 500) -> dict[str, Any]:
    """OpenAI's error object (also the payload of a broken stream's last event)."""
    kind = kind or ("server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _openai(err: AppError, request: HttpRequest | None) -> HttpResponse:
    # OpenAI's SDKs tell a bad key by this code; a 401 of ours of any kind is one.
    code = "invalid_api_key" if err.status == 401 else err.code
    body = openai_body(err.message, code=code, kind=err.extra.get("type"), param=err.extra.get("param"),
                       status=err.status)
    return JsonResponse(body, status=err.status)


_RENDERERS: dict[str, Callable[[AppError, HttpRequest | None], HttpResponse]] = {
    OURS: _ours,
    OPENAI: _openai,
}


def error_response(err: AppError, *, shape: str, request: HttpRequest | None = None) -> HttpResponse:
    """`err` as an HTTP answer in `shape` (OURS, OPENAI, or a shape added to `_RENDERERS`)."""
    response = _RENDERERS[shape](err, request)
    if err.retry_after is not None:
        response["Retry-After"] = str(max(1, math.ceil(err.retry_after)))
    if getattr(err, "www_authenticate", False):
        response["WWW-Authenticate"] = 'Bearer realm="api"'
    allow = getattr(err, "allow", None)
    if allow:
        response["Allow"] = allow
    response._has_been_logged = True  # type: ignore[attr-defined]  # see the module docstring
    return response
