"""The door: request bodies are bounded before Django reads a byte of them.

Owns the body-size limit at the servers' edge, for both entry points, and the
413 answer they give:

- ASGI (`make serve`; `project.asgi_handler.GatewayASGIHandler`): a declared
  `Content-Length` over the limit is answered 413 before any body is received
  (nor is `100 Continue` sent); a chunked body is counted as it arrives and
  refused the moment it passes the limit: the chunk that would pass it is
  never written, so at most the limit is ever held in memory (or on disk,
  when the limit is above FILE_UPLOAD_MAX_MEMORY_SIZE).
- WSGI (`make run`'s runserver, gunicorn on `project.wsgi`): `WSGIDoor`
  answers a declared `Content-Length` over the limit with 413 before the
  application runs; runserver's own handler (`project.devserver`) never
  drains a body nobody read (Django's reads it whole into memory to keep the
  connection open), it closes the connection instead. A WSGI request without
  `Content-Length` has no body for Django (chunked bodies are not read there).

Routes without authentication that take no body (`BODY_FREE_PATHS`:
`/healthz`, `/readyz`, `/metrics`) never read one: Django gets an empty body
whatever the client sends, and the connection is closed after the answer.

The 413 is JSON in the route's own error shape (OpenAI's under `/v1/`, the
project's elsewhere), always with `Connection: close`: the rest of the body
is never read. The limit is DATA_UPLOAD_MAX_MEMORY_SIZE (the
`MAX_REQUEST_BYTES` variable); `None` turns the door off, as it turns off
Django's own check.
"""
from __future__ import annotations

import json
from collections.abc import Iterable

from django.conf import settings

from project.errors import error_payload
from resilience.ops.middleware import REQUEST_ID_HEADER, request_id_from
from resilience.telemetry import metrics

#: Answered without authentication and without a body: none is ever read.
BODY_FREE_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
TOO_LARGE_STATUS = "413 Request Entity Too Large"


class BodyTooLarge(Exception):
    """A request body passed the limit (declared, or counted as it arrived)."""


def body_limit() -> int | None:
    """The largest request body accepted, in bytes (None: no limit)."""
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return None if limit is None else int(limit)


def reads_no_body(path: str) -> bool:
    return path in BODY_FREE_PATHS


def declared_length(value: str | bytes | None) -> int | None:
    """A `Content-Length` value as a number (None when absent or not a number)."""
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    text = text.strip()
    return int(text) if text.isdigit() else None


def declared_too_large(value: str | bytes | None) -> bool:
    limit, declared = body_limit(), declared_length(value)
    return limit is not None and declared is not None and declared > limit


def too_large_body(path: str) -> bytes:
    """The 413 body for `path`, in that route's error shape."""
    limit = body_limit()
    message = f"Request body exceeds the size limit of {limit} bytes."
    return json.dumps(error_payload(path, status=413, code="request_too_large", message=message,
                                    limit=limit)).encode()


def too_large_headers(body: bytes, given_request_id: str | None) -> list[tuple[str, str]]:
    """The 413's headers; it carries a request id like every answer (the caller's when sane)."""
    return [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
            (REQUEST_ID_HEADER, request_id_from(given_request_id))]


class WSGIDoor:
    """WSGI middleware: a declared body over the limit is refused before the
    application runs; body-free routes see an empty body."""

    def __init__(self, application) -> None:
        self.application = application

    def __call__(self, environ: dict, start_response) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if reads_no_body(path):
            environ["CONTENT_LENGTH"] = "0"
        elif declared_too_large(environ.get("CONTENT_LENGTH")):
            body = too_large_body(path)
            metrics.body_refused_count()
            # WSGI forbids an application's `Connection` header: the server closes
            # the connection because the body was not read (project.devserver).
            start_response(TOO_LARGE_STATUS, too_large_headers(body, environ.get("HTTP_X_REQUEST_ID")))
            return [body]
        return self.application(environ, start_response)
