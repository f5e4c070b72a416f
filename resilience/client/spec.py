"""What a call asks for, before `requests` (or httpx) prepares it.

Preparing a request costs hundreds of microseconds; a cache hit or an open
breaker must not pay it. A `RequestSpec` gives the cache key and the logged
path cheaply; the transport prepares the request only when it sends it.
"""
from __future__ import annotations

import hashlib
import json as json_module
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from resilience.client.urls import redact_path


class RequestSpec:
    """Method, URL (already joined under the base URL), params, headers and
    body of one call. Credentials are never part of it: they are added to the
    prepared request only (resilience.client.credentials). The query pairs
    and the body's cache key are worked out when first asked for (the cache
    key and the logged path need them; a plain call does not). Treat it as
    immutable."""

    __slots__ = ("_body_key", "_query", "data", "headers", "json", "method", "params", "url")

    def __init__(self, method: str, url: str, params: Any = None, headers: dict[str, str] | None = None,
                 data: Any = None, json: Any = None) -> None:
        self.method, self.url, self.params = method, url, params
        self.headers = headers if headers is not None else {}
        self.data, self.json = data, json
        self._query: list[tuple[str, str]] | None = None
        self._body_key: bytes | bool | None = False  # False: not worked out yet

    @property
    def url_path(self) -> str:
        return self.url.partition("?")[0]

    @property
    def query(self) -> list[tuple[str, str]]:
        """The URL's own query pairs, then `params`'."""
        if self._query is None:
            own_query = self.url.partition("?")[2]
            own = parse_qsl(own_query, keep_blank_values=True) if own_query else []
            self._query = own + param_pairs(self.params)
        return self._query

    @property
    def body_key(self) -> bytes | None:
        if self._body_key is False:
            self._body_key = body_key(self.data, self.json)
        return self._body_key  # type: ignore[return-value]

    @property
    def cacheable(self) -> bool:
        """False for bodies that cannot be keyed (files, generators)."""
        return self.body_key is not None

    def path_for_log(self, secret_names: frozenset[str]) -> str:
        path = "/" + self.url_path.split("://", 1)[-1].partition("/")[2]
        if not self.query:
            return path
        return redact_path(f"{path}?{urlencode(self.query, quote_via=quote, safe='')}", secret_names)

    def cache_key(self, upstream: str, vary: tuple[str, ...]) -> str:
        """Method, URL with sorted query, body and varying headers."""
        digest = hashlib.sha256()
        for piece in (self.method, self.url_path, urlencode(sorted(self.query)) if self.query else ""):
            digest.update(piece.encode() + b"\0")
        digest.update(self.body_key or b"")
        if vary:
            lowered = {k.lower(): v for k, v in self.headers.items()}
            for header in vary:
                digest.update(f"\0{header}={lowered.get(header, '')}".encode())
        return f"http:{upstream}:{digest.hexdigest()}"

    def full_url(self) -> str:
        """The URL with the whole query, as sent (before credentials)."""
        return self.url_path + (f"?{urlencode(self.query)}" if self.query else "")

    def body_bytes(self) -> bytes:
        """The body as sent by the async transport (requests encodes its own)."""
        if self.json is not None:
            return json_module.dumps(self.json, separators=(",", ":"), default=str).encode()
        if self.data is None:
            return b""
        if isinstance(self.data, bytes):
            return self.data
        if isinstance(self.data, str):
            return self.data.encode()
        if isinstance(self.data, dict):
            return urlencode(param_pairs(self.data)).encode()
        raise TypeError(f"cannot send a {type(self.data).__name__} body asynchronously")

    def content_type(self) -> str | None:
        if self.json is not None:
            return "application/json"
        if isinstance(self.data, dict):
            return "application/x-www-form-urlencoded"
        return None


def param_pairs(params: Any) -> list[tuple[str, str]]:
    """Query pairs the way requests encodes `params` (None values dropped)."""
    if not params:
        return []
    if isinstance(params, (str, bytes)):
        text = params.decode() if isinstance(params, bytes) else params
        return parse_qsl(text, keep_blank_values=True)
    items = params.items() if hasattr(params, "items") else params
    pairs: list[tuple[str, str]] = []
    for key, value in items:
        values = value if isinstance(value, (list, tuple)) else [value]
        pairs.extend((str(key), str(v)) for v in values if v is not None)
    return pairs


def body_key(data: Any, json_body: Any) -> bytes | None:
    """Canonical bytes of a body for the cache key; None when it cannot be
    keyed (files, generators: such calls are never cached)."""
    if json_body is not None:
        return b"json:" + json_module.dumps(json_body, sort_keys=True, separators=(",", ":"),
                                            default=str).encode()
    if data is None:
        return b""
    if isinstance(data, bytes):
        return b"raw:" + data
    if isinstance(data, str):
        return b"raw:" + data.encode()
    if isinstance(data, dict):
        return b"form:" + urlencode(sorted(param_pairs(data))).encode()
    return None
