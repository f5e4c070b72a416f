"""DRF glue shared by every API in the project: the exception handler that
gives every error one JSON shape (token authentication is aigen.edge.auth's):

    {"success": false, "error": {"code": "...", "message": "...", ...}}

`AppError`s keep their own code and status; DRF's errors map to 400/401/403/
404/405/413/415/429 (`app_error`, the mapping aigen's edge renders through
too); anything unexpected is logged and answered as a 500 in the same shape,
never as a stack trace. The rest of the API's error handling:
request bodies (size limit, nesting) in `resilience.ops.parsers`, unknown routes
and trailing slashes in `api_route_fallback`.
"""
from __future__ import annotations

import logging
import math
from typing import Any

from asgiref.sync import async_to_sync, iscoroutinefunction
from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.urls import Resolver404, resolve
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions, status
from rest_framework.response import Response

from resilience.exceptions import AppError, Refusal
from resilience.ops.parsers import too_large

logger = logging.getLogger(__name__)


def error_response(code: str, message: str, http_status: int, *,
                   retry_after: float | None = None, **extra: Any) -> Response:
    response = Response({"success": False, "error": {"code": code, "message": message, **extra}},
                        status=http_status)
    if retry_after is not None:
        response["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return response


def _first_problem(detail: Any, path: str = "") -> tuple[str, str]:
    """The first (field path, message) in a DRF validation error detail."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            field = key if key != "non_field_errors" else ""
            return _first_problem(value, f"{path}.{field}" if path and field else (field or path))
    if isinstance(detail, list) and detail:
        for index, value in enumerate(detail):
            if isinstance(value, (dict, list)):
                return _first_problem(value, f"{path}[{index}]")
            return path, str(value)
    return path, str(detail)


def app_error(exc: Exception, context: dict[str, Any]) -> AppError:
    """`exc` as an `AppError` (see the module docstring); an unexpected one
    is logged and becomes a 500 `internal_error`."""
    if isinstance(exc, AppError):
        return exc
    if isinstance(exc, Http404):
        return Refusal("not_found", str(exc) or "Not found.", status.HTTP_404_NOT_FOUND)
    if isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    if isinstance(exc, RequestDataTooBig):
        return too_large()
    if isinstance(exc, exceptions.ValidationError):
        field, message = _first_problem(exc.detail)
        text = f"{field}: {message}" if field else message
        return Refusal("invalid", text, status.HTTP_400_BAD_REQUEST, field=field or None, fields=exc.detail)
    if isinstance(exc, exceptions.Throttled):
        return Refusal("throttled", str(exc.detail), exc.status_code, retry_after=exc.wait)
    if isinstance(exc, (exceptions.NotAuthenticated, exceptions.AuthenticationFailed)):
        return Refusal(exc.default_code, str(exc.detail), status.HTTP_401_UNAUTHORIZED, www_authenticate=True)
    if isinstance(exc, exceptions.APIException):
        code = exc.default_code if isinstance(exc.default_code, str) else "error"
        return Refusal(code, str(exc.detail), exc.status_code)
    logger.exception("unhandled error in %s", context.get("view").__class__.__name__)
    return Refusal("internal_error", "Internal server error.", status.HTTP_500_INTERNAL_SERVER_ERROR)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    """DRF's exception handler (settings.REST_FRAMEWORK) for the project's
    own APIs; aigen's views under /api/ai/ render the same mapping through
    aigen.edge.errors."""
    err = app_error(exc, context)
    response = error_response(err.code, err.message, err.status, retry_after=err.retry_after, **err.extra)
    if getattr(err, "www_authenticate", False):
        response["WWW-Authenticate"] = 'Bearer realm="api"'
    return response


@csrf_exempt  # the view it hands over to does its own CSRF check (DRF: session requests)
def api_route_fallback(request: HttpRequest, path: str = "") -> HttpResponse:
    """Every /api/ path no route matched (project.urls mounts it last).

    A trailing slash is accepted both ways across the API: `/api/schema` is
    `/api/schema/`, `/api/ai/cache/` is `/api/ai/cache` (the request is handed
    to that route's view, method and body intact; no redirect for a client to
    follow). Anything else is a JSON 404 in the shared shape, never Django's
    HTML page.
    """
    current = request.path_info
    toggled = current[:-1] if current.endswith("/") else f"{current}/"
    try:
        match = resolve(toggled)
    except Resolver404:
        match = None
    if match is not None and match.func is not api_route_fallback:
        request.resolver_match = match
        view = match.func
        if iscoroutinefunction(view):
            return async_to_sync(view)(request, *match.args, **match.kwargs)
        return view(request, *match.args, **match.kwargs)
    body = {"success": False, "error": {"code": "not_found",
                                        "message": f"No API route {request.method} {request.path}."}}
    return JsonResponse(body, status=status.HTTP_404_NOT_FOUND)
