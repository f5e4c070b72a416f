"""The JSON request parser of every API view (REST_FRAMEWORK's
DEFAULT_PARSER_CLASSES; the async generate view applies `json_body`).

What it refuses, in the shared error shape (resilience.api):
- a body over DATA_UPLOAD_MAX_MEMORY_SIZE (`MAX_REQUEST_BYTES`): 413
  `request_too_large`, decided from Content-Length when declared, else after
  reading at most one byte past the limit. DRF reads the body stream itself,
  so Django's own size check would never run;
- a body that is not JSON, or nested so deeply that Python's parser gives up
  (RecursionError, e.g. 10 KB of `[`): 400 `parse_error`, never a 500.
"""
from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from rest_framework import parsers
from rest_framework.exceptions import ParseError

from resilience.exceptions import RequestTooLarge


def too_large() -> RequestTooLarge:
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return RequestTooLarge(f"Request body exceeds the size limit of {limit} bytes.", limit=limit)


def declared_too_large(meta: dict[str, Any]) -> bool:
    """Whether the Content-Length header alone is over the limit."""
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    try:
        declared = int(meta.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return False
    return limit is not None and declared > limit


def json_loads(raw: bytes | str) -> Any:
    """`json.loads` whose failures are ParseError (400 `parse_error`)."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise ParseError("JSON parse error - nested too deeply.") from None
    except ValueError as err:
        raise ParseError(f"JSON parse error - {err}") from None


class LimitedJSONParser(parsers.JSONParser):
    """JSON bodies up to the size limit; deep nesting is a 400, not a 500."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        request = (parser_context or {}).get("request")
        if request is not None and declared_too_large(request.META):
            raise too_large()
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        raw = stream.read() if limit is None else stream.read(limit + 1)
        if limit is not None and len(raw) > limit:
            raise too_large()
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError as err:
            raise ParseError(f"JSON parse error - {err}") from None
        return json_loads(text)
