"""POST /api/ai/generate as an async view: a generation waits on the provider
without holding a thread, so one worker carries hundreds at once.

DRF's views are sync, so this is a Django async view that keeps DRF's
contract: the same authentication (Bearer/Token keys, or a session with its
CSRF check), the same throttle (aigen.edge.throttling), the same body validation
(`GenerationRequest.from_body`) and the shared error shape. `GenerateView` (below)
documents the route for the API schema.

Tokens are checked by aigen.edge.tokens: a token's user is kept in process until
the shared token generation moves (a token revoked or a user saved), read at
most every half second, so a revoked token stops working here within about
that long, as on every other route. Only failed checks meet the failure
throttle (a valid token is never refused by it).
"""
from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Callable
from typing import Any

from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import extend_schema
from rest_framework.authentication import CSRFCheck
from rest_framework.exceptions import ParseError, Throttled
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.views import APIView

from aigen.edge.api import (
    AigenView,
    EventStreamRenderer,
    GenerateRequestSerializer,
    GenerateResponseSerializer,
)
from aigen.edge.auth import token_refused
from aigen.edge.throttling import GenerateThrottle
from aigen.edge.tokens import atoken_user
from aigen.exceptions import GenerationError, RequestTooLarge
from aigen.generation.request import GenerationRequest
from aigen.generation.services import atext_generate, atext_generate_stream
from resilience.context import current_caller
from resilience.exceptions import AppError
from resilience.parsers import json_loads
from resilience.serializers import error_responses
from resilience.telemetry.slow import slow_expected

_KEYWORDS = ("Bearer", "Token")


def _wants_events_only(request: HttpRequest | None) -> bool:
    """A client that accepts text/event-stream and no JSON gets errors as one event."""
    accept = request.headers.get("Accept", "") if request is not None else ""
    return "text/event-stream" in accept and "json" not in accept and "*/*" not in accept


def _error(code: str, message: str, status: int, *, retry_after: float | None = None,
           request: HttpRequest | None = None, **extra: Any) -> HttpResponse:
    body = {"success": False, "error": {"code": code, "message": message, **extra}}
    if _wants_events_only(request):
        response: HttpResponse = HttpResponse(_sse("error", body), status=status,
                                              content_type="text/event-stream; charset=utf-8")
    else:
        response = JsonResponse(body, status=status, json_dumps_params={"ensure_ascii": False})
    if retry_after is not None:
        response["Retry-After"] = str(max(1, math.ceil(retry_after)))
    # An answered error is counted (metrics, call logs), not logged line by
    # line: under overload django.request would log every 503, each through a
    # thread hop. Django skips responses marked as logged.
    response._has_been_logged = True  # type: ignore[attr-defined]
    return response


def _app_error(err: AppError, request: HttpRequest) -> HttpResponse:
    return _error(err.code, err.message, err.status, retry_after=err.retry_after, request=request,
                  **err.extra)


def _unauthenticated(message: str) -> HttpResponse:
    response = _error("not_authenticated" if "not provided" in message else "authentication_failed",
                      message, 401)
    response["WWW-Authenticate"] = 'Bearer realm="api"'
    return response


async def _authenticate(request: HttpRequest) -> tuple[Any, HttpResponse | None]:
    """(user, None) or (None, the 401/403 answer)."""
    header = request.headers.get("Authorization", "")
    if header:
        keyword, _, key = header.partition(" ")
        if keyword in _KEYWORDS:
            user = await atoken_user(key.strip())
            if user is not None:
                current_caller.set(user.pk)  # upstream calls of this request are its (call logs)
                return user, None
            # Only a failed check is counted, per client address (as in the DRF views).
            refusal = await sync_to_async(token_refused)(request, "Invalid token.")
            if isinstance(refusal, Throttled):
                return None, _error("throttled", str(refusal.detail), 429, retry_after=refusal.wait)
            return None, _unauthenticated(str(refusal.detail))
    user = await request.auser()
    if not user.is_authenticated:
        return None, _unauthenticated("Authentication credentials were not provided.")
    current_caller.set(user.pk)
    # A session-authenticated POST must pass the CSRF check, as DRF requires.
    check = CSRFCheck(lambda req: HttpResponse())
    check.process_request(request)
    reason = check.process_view(request, None, (), {})
    if reason:
        return None, _error("permission_denied", f"CSRF Failed: {reason}", 403)
    return user, None


class _Refusal(Exception):
    """An answer decided before the view's work (parse error, media type)."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


def _body(request: HttpRequest) -> Any:
    if request.content_type != "application/json":
        raise _Refusal("unsupported_media_type",
                       f'Unsupported media type "{request.content_type}" in request.', 415)
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    try:
        raw = request.body
    except RequestDataTooBig:
        raise RequestTooLarge(f"Request body exceeds the size limit of {limit} bytes.", limit=limit) from None
    if limit is not None and len(raw) > limit:
        raise RequestTooLarge(f"Request body exceeds the size limit of {limit} bytes.", limit=limit)
    try:
        return json_loads(raw or b"null")
    except ParseError as err:  # the shared parser's wording (resilience.parsers)
        raise _Refusal("parse_error", str(err.detail), 400) from None


def _sse(event: str, data: Any) -> bytes:
    # Bytes, not text: each chunk then passes Django's streaming wrappers
    # without a charset lookup on the response per chunk.
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()


def _event_stream(stream: Any) -> StreamingHttpResponse:
    async def events() -> AsyncIterator[bytes]:
        try:
            yield _sse("start", stream.meta)
            async for chunk in stream:
                yield _sse("delta", {"content": chunk})
            done = stream.result.as_dict()
            done.pop("content")
            yield _sse("done", {"success": True, **done})
        except GenerationError as err:
            yield _sse("error", {"success": False, "error": err.as_dict()})
        finally:
            await stream.aclose()

    response = StreamingHttpResponse(events(), content_type="text/event-stream; charset=utf-8")
    # no-transform: proxies (and our compression middleware) pass events through as they come.
    response["Cache-Control"] = "no-cache, no-transform"
    response["X-Accel-Buffering"] = "no"  # nginx: pass events through as they come
    return response


class GenerateView(AigenView):
    throttle_classes = [GenerateThrottle]
    renderer_classes = [JSONRenderer, EventStreamRenderer]

    @extend_schema(
        request=GenerateRequestSerializer,
        responses={200: GenerateResponseSerializer, **error_responses(
            400, 404, 429, 502, 503, 504,
            e400="Malformed JSON, a missing or mistyped field (`error.field`), or a body over the "
                 "size limit (`invalid`, `request_too_large`).",
            e404="Unknown template or section (`template_not_found`, `section_not_found`).",
            e502="The provider failed (`provider_error`).",
            e503="The provider's breaker is open (`provider_unavailable`; see `Retry-After`).",
            e504="The provider did not answer in time (`provider_timeout`)."),
        },
        summary="Generate one section's text",
        description=(
            'With "stream": true the answer is text/event-stream: a `start` event (section_title, '
            "cached, provider, model), `delta` events ({\"content\": ...}), then `done` (the full "
            "result without content) or `error` ({\"code\", \"message\"})."
        ),
    )
    def post(self, request: Request) -> Any:
        """Served by the async view `aigen.edge.generate.generate` (the route
        points there); this DRF class documents it for the schema and runs
        it when mounted on its own."""
        return async_to_sync(generate)(request._request)


def _documented_by(view_class: type[APIView]) -> Callable[[Callable], Callable]:
    """Give an async view DRF's `as_view()` face (`cls`, `initkwargs`), the
    protocol the schema generator uses to find a route's view class. Applied
    once where the view is defined, not from the URL configuration."""
    def mark(view: Callable) -> Callable:
        view.cls, view.initkwargs = view_class, {}  # type: ignore[attr-defined]
        return view
    return mark


@slow_expected  # generations take seconds by design: not "slow requests"
@_documented_by(GenerateView)
@csrf_exempt  # token requests carry no CSRF token; session requests are checked in _authenticate
async def generate(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        response = _error("method_not_allowed", f'Method "{request.method}" not allowed.', 405)
        response["Allow"] = "POST, OPTIONS"
        return response
    user, refused = await _authenticate(request)
    if refused is not None:
        return refused
    request.user = user
    throttle = GenerateThrottle()
    if not await sync_to_async(throttle.allow_request)(request, None):  # a cache call: off the loop
        wait = throttle.wait()
        return _error("throttled", f"Request was throttled. Expected available in {math.ceil(wait)} seconds.",
                      429, retry_after=wait)
    try:
        generation = GenerationRequest.from_body(_body(request))
        kwargs = {**generation.job_args(), "user": user}
        if generation.stream:
            return _event_stream(await atext_generate_stream(**kwargs))
        result = await atext_generate(**kwargs)
    except AppError as err:
        return _app_error(err, request)
    except _Refusal as refusal:
        return _error(refusal.code, refusal.message, refusal.status, request=request)
    return JsonResponse({"success": True, **result.as_dict()}, json_dumps_params={"ensure_ascii": False})
