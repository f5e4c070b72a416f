"""URL safety and redaction: where a call may go, and what of it may be shown.

`join_url` keeps every call under its upstream's base URL; `redact_path` and
`redact_text` take credentials out of anything that is logged, stored or
raised. Called by the client's steps; nothing here does I/O.
"""
from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from resilience import exceptions as errors

#: Query parameters whose values are never shown (plus the upstream's own
#: query credential, see `Credentials.secret_names`).
SECRET_PARAMS = frozenset({"api_key", "apikey", "key", "token", "access_token", "auth", "secret",
                           "client_secret", "password", "signature", "sig", "code"})
REDACTED = "REDACTED"
# Secrets shorter than this are not searched for in free text: they would
# match ordinary words (and are weak enough to be a configuration error).
_MIN_SECRET_LEN = 4


def join_url(base_url: str, path: str, *, upstream: str) -> str:
    """`_join` for the path part (cached: a few paths, many queries), then
    the query as given."""
    if not isinstance(path, str):
        raise errors.InvalidUpstreamPath(f"refused path {path!r}: not a string", upstream=upstream)
    route, sep, query = path.partition("?")
    if sep and ("\\" in query or any(ord(c) < 32 for c in query)):
        raise errors.InvalidUpstreamPath(f"refused path {path!r}: control characters or backslashes",
                                         upstream=upstream)
    joined = _join(base_url, route, upstream=upstream)
    return f"{joined}?{query}" if sep else joined


@functools.lru_cache(maxsize=4096)
def _join(base_url: str, path: str, *, upstream: str) -> str:
    """Join `path` under `base_url`; refuse anything that could leave it.

    A leading slash is optional and never escapes the base path. Refused with
    `InvalidUpstreamPath`, each with its reason: non-strings; backslashes and
    control characters; absolute URLs and scheme-relative `//host`; encoded
    slashes (`%2f`) inside a segment; `..` (also `%2e%2e`) climbing above the
    base path.
    """
    def refuse(why: str) -> errors.InvalidUpstreamPath:
        return errors.InvalidUpstreamPath(f"refused path {path!r}: {why}", upstream=upstream)

    if not isinstance(path, str):
        raise refuse("not a string")
    if "\\" in path or any(ord(c) < 32 for c in path):
        raise refuse("control characters or backslashes")
    if path.startswith("//") or "://" in path.split("?", 1)[0]:
        raise refuse("absolute URLs are not allowed")
    parts = urlsplit(path)
    if parts.scheme or parts.netloc:
        raise refuse("absolute URLs are not allowed")
    segments: list[str] = []
    for raw in parts.path.split("/"):
        decoded = unquote(raw)
        if decoded in ("", "."):
            continue
        if decoded == "..":
            if not segments:
                raise refuse("'..' would leave the base URL")
            segments.pop()
            continue
        if "/" in decoded or "\\" in decoded:
            raise refuse("encoded slashes are not allowed")
        segments.append(raw)
    url = base_url.rstrip("/")
    if segments:
        url += "/" + "/".join(segments)
    if parts.path.endswith("/") and segments:
        url += "/"
    if parts.query:
        url += "?" + parts.query
    return url


def display_url(url: str) -> str:
    """A URL fit for a message or a log line: the user and password dropped,
    every query value (a bare `?value` whole) and the fragment replaced by
    REDACTED (a URL given by an operator may carry a key under any parameter
    name). Scheme, host, port, path and the query's parameter names are kept,
    to say what is wrong."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:  # not a number: shown as given would show whatever it hides
        port = None
    netloc = f"{host}:{port}" if port else host
    if parts.username is not None or parts.password is not None:
        netloc = f"{REDACTED}@{netloc}"
    # A part without "=" is a bare value (a key passed as `?sk-...`): nothing of it is kept.
    query = "&".join(f"{name}={REDACTED}" if sep else REDACTED
                     for name, sep, _ in (part.partition("=") for part in parts.query.split("&") if part))
    return urlunsplit((parts.scheme, netloc, parts.path, query, REDACTED if parts.fragment else ""))


def redact_path(path_url: str, secret_names: frozenset[str]) -> str:
    """`/x?token=abc&q=1` -> `/x?token=REDACTED&q=1`."""
    path, sep, query = path_url.partition("?")
    if not sep:
        return path
    pairs = [(k, REDACTED if k.lower() in secret_names else v)
             for k, v in parse_qsl(query, keep_blank_values=True)]
    return f"{path}?{urlencode(pairs, quote_via=quote, safe='')}"


@functools.lru_cache(maxsize=256)
def _param_pattern(names: frozenset[str]) -> re.Pattern[str]:
    alternatives = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    return re.compile(rf"(?i)\b({alternatives})=([^&\s'\")]+)")


def redact_text(text: str, *, secrets: Iterable[str] = (),
                secret_names: frozenset[str] = SECRET_PARAMS) -> str:
    """Free text (an exception's message, say) with every credential taken out:
    the known secret values wherever they stand (raw or URL-encoded), and the
    value of every `name=value` whose name is a secret parameter."""
    for secret in secrets:
        if secret and len(secret) >= _MIN_SECRET_LEN:
            text = text.replace(secret, REDACTED)
            encoded = quote(secret, safe="")
            if encoded != secret:
                text = text.replace(encoded, REDACTED)
    return _param_pattern(secret_names).sub(rf"\1={REDACTED}", text)


@functools.lru_cache(maxsize=256)
def _param_pattern_bytes(names: frozenset[str]) -> re.Pattern[bytes]:
    return re.compile(_param_pattern(names).pattern.encode())


@functools.lru_cache(maxsize=64)
def secret_forms(secret: str) -> tuple[bytes, ...]:
    """The ways `secret` can stand in a body: as is, URL-encoded and
    JSON-escaped (a `/` as `\\/`, non-ASCII as `\\u....`)."""
    forms = {secret, quote(secret, safe=""), json.dumps(secret)[1:-1],
             json.dumps(secret, ensure_ascii=False)[1:-1], secret.replace("/", "\\/")}
    return tuple(sorted((f.encode() for f in forms), key=len, reverse=True))


def redact_bytes(body: bytes, *, secrets: Iterable[str] = (),
                 secret_names: frozenset[str] = SECRET_PARAMS) -> bytes:
    """`redact_text` for a body as received: the known secrets in every form
    they take in a body, and the value of every `name=value` whose name is a
    secret parameter (a URL echoed with its query)."""
    for secret in secrets:
        if secret and len(secret) >= _MIN_SECRET_LEN:
            for form in secret_forms(secret):
                body = body.replace(form, REDACTED.encode())
    if b"=" not in body:  # most error bodies (JSON) quote no query: skip the scan
        return body
    return _param_pattern_bytes(secret_names).sub(rb"\1=" + REDACTED.encode(), body)


class RedactingFilter(logging.Filter):
    """Takes credential-named query values out of library log lines (urllib3
    logs each retry with the URL it was for, query string included)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


#: The loggers of the libraries that send our requests.
LIBRARY_LOGGERS = ("urllib3", "urllib3.connectionpool", "urllib3.util.retry", "httpx2", "httpcore2")


def redact_library_logs() -> None:
    """Install `RedactingFilter` on the transport libraries' loggers (once)."""
    for name in LIBRARY_LOGGERS:
        target = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in target.filters):
            target.addFilter(RedactingFilter())
