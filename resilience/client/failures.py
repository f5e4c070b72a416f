"""Turning transport failures into `UpstreamError` kinds, with messages that
name the cause (exception type, errno and its text) and never a URL, query or
header: exception texts from requests, urllib3 and httpx quote the URL, and
with it any credential sent as a query parameter.

Both faces use `classify`: the async transport maps httpx errors onto
urllib3's exception types first (resilience.client.asend), so one table
decides what is a timeout, a refused connection or local exhaustion.

`unfixable_answer` reads a provider's error answer for the failures no retry
can fix on the same model (a prompt over the model's context, a
content-policy refusal), which the client never repeats as they are.
"""
from __future__ import annotations

import json
from typing import Any

import requests
from urllib3.exceptions import (
    ConnectTimeoutError,
    EmptyPoolError,
    MaxRetryError,
    NewConnectionError,
    ReadTimeoutError,
)

from resilience import exceptions as errors
from resilience.client.policy import DeadlineExceeded, Trace


def root_cause(exc: BaseException) -> BaseException:
    """The innermost exception: the OSError under requests' and urllib3's wrappers."""
    seen = {id(exc)}
    current = exc
    while True:
        nxt: Any = None
        if isinstance(current, MaxRetryError) and current.reason is not None:
            nxt = current.reason
        elif isinstance(current, requests.RequestException) and current.args \
                and isinstance(current.args[0], BaseException):
            nxt = current.args[0]
        else:
            nxt = current.__cause__ or current.__context__
        if nxt is None or id(nxt) in seen:
            return current
        seen.add(id(nxt))
        current = nxt


def describe_cause(exc: BaseException) -> str:
    """`ConnectionRefusedError [Errno 111] Connection refused`: the root cause's
    type, errno and strerror, the parts that never quote a URL."""
    cause = root_cause(exc)
    name = type(cause).__name__
    errno = getattr(cause, "errno", None)
    strerror = getattr(cause, "strerror", None)
    if errno is not None and strerror:
        return f"{name} [Errno {errno}] {strerror}"
    return name


def _unwrap(exc: BaseException) -> BaseException:
    reason: Any = exc
    if isinstance(exc, requests.RequestException) and exc.args:
        reason = getattr(exc.args[0], "reason", exc.args[0])
    if isinstance(reason, MaxRetryError):
        reason = reason.reason
    return reason


def nothing_sent(exc: BaseException) -> bool:
    """Whether a failed send never reached the upstream (the connection was
    not made): trying another endpoint cannot repeat a request it ran."""
    reason = _unwrap(exc)
    return isinstance(reason, (NewConnectionError, ConnectTimeoutError)) or isinstance(
        exc, requests.ConnectTimeout)


def classify(exc: BaseException, trace: Trace, *, upstream: str) -> errors.UpstreamError:
    """The UpstreamError kind for a failed send (see the module docstring)."""
    tries = len(trace.history)
    reason = _unwrap(exc)
    if isinstance(reason, EmptyPoolError) or isinstance(exc, EmptyPoolError):
        return errors.PoolExhausted(f"{upstream}: no pooled connection came free before the deadline",
                                    upstream=upstream, retry_after=1.0)
    if isinstance(exc, DeadlineExceeded) or isinstance(reason, DeadlineExceeded) or trace.remaining() <= 0:
        return errors.UpstreamTimeout(
            f"{upstream}: deadline of the call exceeded after {max(tries, 1)} attempt(s) "
            f"({describe_cause(exc)})", upstream=upstream)
    # NewConnectionError subclasses ConnectTimeoutError (urllib3 history): a refusal is no timeout.
    timed_out = not isinstance(reason, NewConnectionError) and (
        isinstance(exc, requests.Timeout) or isinstance(reason, (ReadTimeoutError, ConnectTimeoutError)))
    if timed_out:
        return errors.UpstreamTimeout(f"{upstream}: timed out after {max(tries, 1)} attempt(s)",
                                      upstream=upstream)
    described = describe_cause(exc)
    if tries > 1:
        return errors.RetriesExhausted(f"{upstream}: connection failed after {tries} attempts ({described})",
                                       upstream=upstream, last_error=described)
    return errors.UpstreamConnectionError(f"{upstream}: connection failed ({described})", upstream=upstream)



#: What `unfixable_answer` returns.
CONTEXT_LENGTH = "context_length_exceeded"
CONTENT_POLICY = "content_policy"
_CONTEXT_CODES = frozenset({"context_length_exceeded"})
_CONTENT_CODES = frozenset({"content_policy_violation", "content_filter"})


def unfixable_answer(status: int, body: bytes) -> str:
    """`CONTEXT_LENGTH` or `CONTENT_POLICY` when a 400 answer says the request
    itself is what the model refuses (OpenAI's error shape: `error.code`, or
    `error.type` for content policy), else "". A body that is not that
    shape is an ordinary error answer."""
    if status != 400 or not body or body[:1] not in (b"{", b" ", b"\n"):
        return ""
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return ""
    if not isinstance(error, dict):
        return ""
    code, kind = error.get("code"), error.get("type")
    if code in _CONTEXT_CODES:
        return CONTEXT_LENGTH
    if code in _CONTENT_CODES or kind in _CONTENT_CODES:
        return CONTENT_POLICY
    return ""
