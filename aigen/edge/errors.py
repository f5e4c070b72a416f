"""Every error body the gateway answers, from one renderer, in the caller's shape.

An error reaches this module as an `AppError` kind (its `code`, `message`,
`status`, `retry_after` and `extra`) and leaves it as a body in one of three
shapes:

- `OURS` (/api/...): `{"success": false, "error": {"code", "message", ...}}`,
  or one `error` server-sent event for a client that accepts only
  text/event-stream;
- `OPENAI` (/v1/chat/completions, /v1/models):
  `{"error": {"message", "type", "param", "code"}}`;
- `ANTHROPIC` (/v1/messages): `{"type": "error", "error": {"type", "message"}}`,
  with Anthropic's status for an upstream that could not serve (529
  `overloaded_error` when every endpoint is open or full, 504
  `timeout_error`).

`error_body(err, shape)` is the body, `error_response(err, shape=...)` the
HTTP answer (with `Retry-After`, `WWW-Authenticate`, `Allow`), `error_event`
the last event of a stream that cannot go on. Who renders through it: the
async views of aigen.edge (generate, the OpenAI and Anthropic front doors),
the DRF views under /api/ai/ (their `get_exception_handler` is
`api_exception_handler`, which keeps the project's mapping of DRF's errors,
resilience.ops.api.app_error), and the errors Django answers itself under
/api and /v1 (project.errors, the door's 413).

An error changes type at most twice on its way here: a provider or transport
failure becomes an `UpstreamError` kind in the resilient client (or, for
/api/ai/generate, the `GenerationError` kind the provider maps it to), and
that kind becomes the body here. A provider's own error answer (a status of
400 or more with its body) is parsed once into `ProviderAnswered`.

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

import orjson
from django.http import HttpRequest, HttpResponse, JsonResponse

from aigen.generation import translate
from resilience.exceptions import AppError, Refusal
from resilience.ops.api import app_error

OURS = "ours"
OPENAI = "openai"
ANTHROPIC = "anthropic"

#: OpenAI's error type per status, where it is not `invalid_request_error` / `server_error`.
OPENAI_KINDS = {401: "invalid_request_error", 403: "invalid_request_error", 429: "requests"}
#: The UpstreamError codes that mean "no endpoint could take the call": Anthropic's 529.
OVERLOADED = frozenset({"breaker_open", "bulkhead_full", "pool_exhausted", "upstream_disabled",
                        "endpoint_limits_reached"})
_ANTHROPIC_KINDS = frozenset(translate.ERROR_TYPES.values())

__all__ = ["ANTHROPIC", "OPENAI", "OURS", "ProviderAnswered", "Refusal", "api_exception_handler",
           "error_body", "error_event", "error_response", "sse"]


class ProviderAnswered(AppError):
    """The provider's own error answer (status >= 400), its body parsed once.

    `wire` is the format the provider speaks (`openai` or `anthropic`): an
    OpenAI caller of an OpenAI-format provider gets the provider's body as
    it is (`verbatim`); every other pairing gets the provider's message and
    error type in the caller's shape, with the provider's status and
    `Retry-After` (when it gave seconds)."""

    def __init__(self, response: Any, *, wire: str = "openai") -> None:
        status = response.status_code
        try:
            body = json.loads(response.content)
        except ValueError:
            body = None
        error = body.get("error") if isinstance(body, dict) else None
        error = error if isinstance(error, dict) else {}
        super().__init__(str(error.get("message") or "") or f"the provider answered {status}")
        self.status, self.code = status, "provider_error"
        self.provider_kind = error.get("type") if isinstance(error.get("type"), str) else None
        self.verbatim: bytes | None = response.content if error and wire == "openai" else None
        if wire == "anthropic":  # OpenAI's names for the provider's error type
            translated = translate.openai_error(body, status)["error"]
            self.code, self.extra = translated["code"], {"type": translated["type"]}
        retry = response.headers.get("Retry-After")
        self.retry_after = float(retry) if retry and retry.isdigit() else None


def sse(event: str, data: Any) -> bytes:
    """One server-sent event. Bytes, not text: each chunk then passes Django's
    streaming wrappers without a charset lookup per chunk."""
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()


def _ours(err: AppError) -> dict[str, Any]:
    return {"success": False, "error": err.as_dict()}


def _openai(err: AppError) -> dict[str, Any]:
    # OpenAI's SDKs tell a bad key by this code; a 401 of ours of any kind is one.
    code = "invalid_api_key" if err.status == 401 else err.code
    default = "server_error" if err.status >= 500 else OPENAI_KINDS.get(err.status, "invalid_request_error")
    return {"error": {"message": err.message, "type": err.extra.get("type") or default,
                      "param": err.extra.get("param"), "code": code}}


def anthropic_status(err: AppError) -> tuple[int, str]:
    """(status, Anthropic error type) of `err` on the Messages front door."""
    if err.code in OVERLOADED:
        return 529, "overloaded_error"
    kind = getattr(err, "provider_kind", None) or err.extra.get("type")
    return err.status, kind if kind in _ANTHROPIC_KINDS else translate.ERROR_TYPES.get(
        err.status, "api_error" if err.status >= 500 else "invalid_request_error")


def _anthropic(err: AppError) -> dict[str, Any]:
    status, kind = anthropic_status(err)
    return translate.anthropic_error(status, err.message, kind=kind)


_BODIES: dict[str, Callable[[AppError], dict[str, Any]]] = {
    OURS: _ours, OPENAI: _openai, ANTHROPIC: _anthropic}


def error_body(err: AppError, *, shape: str) -> dict[str, Any]:
    """`err`'s body in `shape` (OURS, OPENAI or ANTHROPIC)."""
    return _BODIES[shape](err)


def error_event(err: AppError, *, shape: str) -> bytes:
    """The last event of a stream that cannot go on, in `shape`. OpenAI's
    names the stream's failure (`stream_interrupted`, `upstream_timeout` past
    the stream's cap), which the OpenAI SDKs raise as an APIError."""
    if shape == OPENAI:
        code = err.code if err.code == "upstream_timeout" else "stream_interrupted"
        body = {"error": {"message": err.message, "type": "server_error", "param": None, "code": code}}
        return f"data: {json.dumps(body)}\n\n".encode()
    return sse("error", error_body(err, shape=shape))


def _wants_events_only(request: Any) -> bool:
    """A client that accepts text/event-stream and no JSON gets errors as one event."""
    accept = request.headers.get("Accept", "") if request is not None else ""
    return "text/event-stream" in accept and "json" not in accept and "*/*" not in accept


def _response(err: AppError, shape: str, request: Any) -> HttpResponse:
    if isinstance(err, ProviderAnswered) and err.verbatim is not None and shape == OPENAI:
        return HttpResponse(err.verbatim, status=err.status, content_type="application/json")
    if shape == OURS and _wants_events_only(request):
        return HttpResponse(error_event(err, shape=OURS), status=err.status,
                            content_type="text/event-stream; charset=utf-8")
    status = anthropic_status(err)[0] if shape == ANTHROPIC else err.status
    return JsonResponse(error_body(err, shape=shape), status=status,
                        json_dumps_params={"ensure_ascii": False})


def error_response(err: AppError, *, shape: str, request: HttpRequest | Any = None) -> HttpResponse:
    """`err` as an HTTP answer in `shape` (see the module docstring)."""
    response = _response(err, shape, request)
    if err.retry_after is not None:
        response["Retry-After"] = str(max(1, math.ceil(err.retry_after)))
    if getattr(err, "www_authenticate", False):
        response["WWW-Authenticate"] = 'Bearer realm="api"'
    allow = getattr(err, "allow", None)
    if allow:
        response["Allow"] = allow
    response._has_been_logged = True  # type: ignore[attr-defined]  # see the module docstring
    return response


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> HttpResponse:
    """DRF's exception handler for the views under /api/ai/: the project's
    mapping of DRF's errors (resilience.ops.api.app_error), rendered here."""
    return error_response(app_error(exc, context), shape=OURS, request=context.get("request"))


def provider_json(response: Any) -> Any:
    """The provider's successful answer as JSON, or a 502 `provider_error`
    (a 200 that is not JSON is the provider's failure, not the caller's)."""
    content = response.content
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:  # what only the standard parser reads (NaN, a UTF-16 body) still is
        pass
    try:
        return json.loads(content)
    except ValueError:
        raise Refusal("provider_error", "the provider's answer is not JSON", 502) from None
