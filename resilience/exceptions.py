"""The project's error types: one base, `AppError`, that the API turns into
`{"success": false, "error": {"code", "message", ...}}` with its HTTP status.

Upstream failures are `UpstreamError` kinds; `aigen` adds `GenerationError`.
"""
from __future__ import annotations

from typing import Any


class AppError(Exception):
    """Base of every error the service reports on purpose.

    `code` is machine-readable and stable; `status` is the HTTP status the API
    answers with; `extra` lands in the JSON error body; `retry_after` (seconds)
    becomes a `Retry-After` header.
    """

    code = "error"
    status = 500
    retry_after: float | None = None

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **self.extra}


class Refusal(AppError):
    """An answer an edge decides before any work (authentication, CSRF,
    throttling, media type, method, parsing): its code and status per instance,
    `www_authenticate` and `allow` for the headers of a 401 and a 405."""

    def __init__(self, code: str | None, message: str, status: int, *, retry_after: float | None = None,
                 www_authenticate: bool = False, allow: str | None = None, **extra: Any) -> None:
        super().__init__(message, **extra)
        self.code, self.status, self.retry_after = code, status, retry_after  # type: ignore[assignment]
        self.www_authenticate, self.allow = www_authenticate, allow


class CredentialChangeForbidden(AppError):
    """A change would bind a credential to an origin (add one, move it to
    another scheme, host or port, or send another variable) and the user
    lacks `resilience.change_credentials`."""

    code = "credential_change_forbidden"
    status = 403


class UpstreamError(AppError):
    """A call to an upstream API did not produce a usable response."""

    code = "upstream_error"
    status = 502

    def __init__(self, message: str, *, upstream: str, **extra: Any) -> None:
        super().__init__(message, upstream=upstream, **extra)
        self.upstream = upstream


class UnknownUpstream(UpstreamError):
    code = "unknown_upstream"
    status = 404


class UpstreamDisabled(UpstreamError):
    code = "upstream_disabled"
    status = 503


class CredentialRefused(UpstreamError):
    """The policy names an environment variable that may not be an upstream
    credential (a row saved before the rule, or the settings changed since):
    nothing is sent. The message names the variable, never a value."""

    code = "credential_refused"
    status = 502


class UntranslatableRequest(UpstreamError):
    """A call whose body cannot be put in the wire format of the endpoint an
    attempt went to (resilience.client.wires); nothing was sent."""

    code = "untranslatable_request"
    status = 400


class InvalidUpstreamPath(UpstreamError):
    """The path would leave the upstream's base URL (absolute URL, //host, ..)."""

    code = "invalid_upstream_path"
    status = 400


class BreakerOpen(UpstreamError):
    """The upstream's circuit breaker is open; `retry_after` says when it probes."""

    code = "breaker_open"
    status = 503

    def __init__(self, message: str, *, upstream: str, retry_after: float) -> None:
        super().__init__(message, upstream=upstream, retry_after=round(retry_after, 3))
        self.retry_after = max(retry_after, 0.0)


class LocalCapacityExhausted(UpstreamError):
    """This process has no room for the call right now: nothing was sent, and
    the upstream is not to blame (never counted against its breaker)."""

    status = 503

    def __init__(self, message: str, *, upstream: str, retry_after: float = 1.0) -> None:
        super().__init__(message, upstream=upstream)
        self.retry_after = retry_after


class BulkheadFull(LocalCapacityExhausted):
    """The upstream's bulkhead (calls in flight per process) stayed full for
    the whole bulkhead wait."""

    code = "bulkhead_full"


class NoRoom(LocalCapacityExhausted):
    """No endpoint had room (its rpm/tpm limit, or what the provider said is
    left) before the call's deadline: it waited in the priority queue and
    nothing was sent. `retry_after` is when room is likely."""

    code = "endpoint_limits_reached"


class PoolExhausted(LocalCapacityExhausted):
    """No pooled connection came free before the call's deadline."""

    code = "pool_exhausted"


class UpstreamTimeout(UpstreamError):
    """A connect/read timeout, or the call's overall deadline, passed."""

    code = "upstream_timeout"
    status = 504


class UpstreamConnectionError(UpstreamError):
    code = "upstream_connection_error"
    status = 502


class RetriesExhausted(UpstreamError):
    """Every allowed attempt failed; `last_status` / `last_error` say how."""

    code = "upstream_retries_exhausted"
    status = 502

    def __init__(self, message: str, *, upstream: str, last_status: int | None = None,
                 last_error: str | None = None, response: Any = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message, upstream=upstream, last_status=last_status, last_error=last_error)
        self.last_status = last_status
        self.last_error = last_error
        self.response = response
        if retry_after is not None:
            self.retry_after = retry_after


class StreamInterrupted(UpstreamError):
    """A supervised stream broke after it had sent events and could not be
    continued (resilience.client.stream); the message names the original
    failure (the cut, the silence), never a later attempt's."""

    code = "stream_interrupted"
    status = 502

    def __init__(self, message: str, *, upstream: str, cause: str) -> None:
        super().__init__(message, upstream=upstream, cause=cause)
        #: The original failure's code (`upstream_timeout` for a stall, ...).
        self.cause = cause


class UpstreamHTTPError(UpstreamError):
    """A non-retryable error status; the response is kept on `.response`."""

    code = "upstream_http_error"
    status = 502

    def __init__(self, message: str, *, upstream: str, response: Any) -> None:
        super().__init__(message, upstream=upstream, upstream_status=response.status_code)
        self.response = response


class RequestTooLarge(AppError):
    """A request body over DATA_UPLOAD_MAX_MEMORY_SIZE (`MAX_REQUEST_BYTES`)."""

    code = "request_too_large"
    status = 413


class UnknownEndpoint(AppError):
    code = "unknown_endpoint"
    status = 404


class BreakerControlRefused(AppError):
    """A breaker control that cannot apply: the breaker is disabled, the
    endpoint is disabled, or another worker's transition held the breaker."""

    code = "breaker_control_refused"
    status = 409


class ConfigInvalid(AppError):
    """A configuration file that cannot be applied; `entry` and `field` say where."""

    code = "config_invalid"
    status = 400


class InvalidInput(AppError):
    """Bad input found past the serializers (a service's own check); `field` names it."""

    code = "invalid"
    status = 400


class NotFound(AppError):
    code = "not_found"
    status = 404
