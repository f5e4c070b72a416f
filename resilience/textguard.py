"""Request bodies whose JSON is not text: a `\\ud800` escape without its
pair (a lone UTF-16 surrogate) parses into a Python string that cannot be
encoded as UTF-8, so the first error message that echoes it, cache key that
hashes it or database write that stores it fails with a 500. Found by the
acceptance suite (tests/acceptance/test_abuse.py) on both the DRF views and
the async generate view.

`TextGuardMiddleware` refuses such a body before any view with 400
`parse_error` in the shared error shape. The check is one regular-expression
search over the raw bytes of JSON requests (C speed; a body without a
surrogate escape, nearly all of them, is scanned once and passed on).
Escaped backslashes are honoured: `"\\\\ud800"` is the text `\\ud800`, not an
escape. Bodies over the size limit are left to the views, which refuse them.
"""
from __future__ import annotations

import re
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponseBase, JsonResponse

# A \uXXXX escape in the surrogate range, preceded by an even number of backslashes.
_SURROGATE = re.compile(rb"(?<!\\)(?:\\\\)*\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_PAIR = re.compile(rb"(?<!\\)((?:\\\\)*)\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}")


def lone_surrogate(raw: bytes) -> bool:
    """Whether a JSON text escapes a UTF-16 surrogate outside a valid pair."""
    if not _SURROGATE.search(raw):
        return False
    return bool(_SURROGATE.search(_PAIR.sub(rb"\1", raw)))


def _refusal(request: HttpRequest) -> HttpResponseBase | None:
    if request.method in ("GET", "HEAD", "OPTIONS") or "json" not in (request.content_type or ""):
        return None
    try:
        raw = request.body
    except RequestDataTooBig:
        return None  # the view answers the size limit in its own words
    if not lone_surrogate(raw):
        return None
    return JsonResponse({"success": False, "error": {
        "code": "parse_error", "message": "JSON parse error - a lone UTF-16 surrogate escape is not text."}},
        status=400)


class TextGuardMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self._acall(request)
        return _refusal(request) or self.get_response(request)

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        return _refusal(request) or await self.get_response(request)
