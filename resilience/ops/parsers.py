"""The JSON request parser of every API view (REST_FRAMEWORK's
DEFAULT_PARSER_CLASSES; the async generate view applies `json_body`).

What it refuses, in the shared error shape (resilience.ops.api):
- a body over DATA_UPLOAD_MAX_MEMORY_SIZE (`MAX_REQUEST_BYTES`): 413
  `request_too_large`, decided from Content-Length when declared, else after
  reading at most one byte past the limit. DRF reads the body stream itself,
  so Django's own size check would never run;
- a body that is not JSON, or nested so deeply that Python's parser gives up
  (RecursionError, e.g. 10 KB of `[`): 400 `parse_error`, never a 500;
- JSON that is not text: a `\ud800` escape without its pair (a lone UTF-16
  surrogate) parses into a string that cannot be encoded as UTF-8, so the
  first error message that echoes it, cache key that hashes it or database
  write that stores it failed with a 500 (found by tests/acceptance). One
  regular-expression search over the text, C speed; escaped backslashes are
  honoured (`"\\ud800"` is the text `\ud800`, not an escape).
"""
from __future__ import annotations

import json
import re
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


# A \uXXXX escape in the surrogate range, preceded by an even number of backslashes;
# and a valid high-low pair of them.
_SURROGATE = re.compile(r"(?<!\\)(?:\\\\)*\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_PAIR = re.compile(r"(?<!\\)((?:\\\\)*)\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}")


def lone_surrogate(text: str) -> bool:
    """Whether a JSON text escapes a UTF-16 surrogate outside a valid pair."""
    if not _SURROGATE.search(text):
        return False
    return bool(_SURROGATE.search(_PAIR.sub(r"\1", text)))


def json_loads(raw: bytes | str) -> Any:
    """`json.loads` whose failures are ParseError (400 `parse_error`)."""
    try:
        text = raw.decode(json.detect_encoding(raw)) if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as err:
        raise ParseError(f"JSON parse error - {err}") from None
    if lone_surrogate(text):
        raise ParseError("JSON parse error - a lone UTF-16 surrogate escape is not text.")
    try:
        return json.loads(text)
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
