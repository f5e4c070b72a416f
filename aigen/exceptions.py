"""The errors the generation service reports: `GenerationError` and its kinds.

Each kind carries the HTTP status the API answers with (rendered by
`aigen.edge.errors`): 400 for bad input, 404 for an unknown
template or section, 503 (with Retry-After) when the provider is unavailable,
504 when it did not answer in time, 502 for any other provider failure.
"""
from __future__ import annotations

from typing import Any

from resilience.exceptions import AppError


class GenerationError(AppError):
    """Base of every error raised by aigen; a provider failure by default."""

    code = "generation_error"
    status = 502


class InvalidInput(GenerationError):
    """The request data does not fit the section; `field` names the culprit,
    e.g. `data.enterprise_info.employees_count`."""

    code = "invalid"
    status = 400

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}" if field else problem, field=field or None)
        self.field = field
        self.problem = problem


class TemplateNotFound(GenerationError):
    code = "template_not_found"
    status = 404

    def __init__(self, template_id: str) -> None:
        super().__init__(f"Unknown template {template_id!r}.", template_id=template_id)


class SectionNotFound(GenerationError):
    code = "section_not_found"
    status = 404

    def __init__(self, template_id: str, section_id: str, known: list[str]) -> None:
        super().__init__(
            f"Template {template_id!r} has no section {section_id!r} (sections: {', '.join(known)}).",
            template_id=template_id, section_id=section_id,
        )


class ProviderError(GenerationError):
    """The provider failed or answered something unusable (HTTP 502)."""

    code = "provider_error"
    status = 502

    def __init__(self, message: str, *, retry_after: float | None = None, **extra: Any) -> None:
        super().__init__(message, **extra)
        if retry_after is not None:
            self.retry_after = retry_after


class ProviderUnavailable(ProviderError):
    """The provider's circuit breaker is open (or its upstream is disabled):
    calls are refused without trying; `retry_after` says when to try again."""

    code = "provider_unavailable"
    status = 503


class ProviderTimeout(ProviderError):
    """The provider did not answer within its timeout or the call's deadline."""

    code = "provider_timeout"
    status = 504


class SingleFlightTimeout(ProviderTimeout):
    """An identical request was generating and did not finish in time."""

    code = "generation_wait_timeout"


class TokenExists(AppError):
    """The user already has an API token (only a replacement can be issued)."""

    code = "token_exists"
    status = 409

    def __init__(self, username: str, prefix: str) -> None:
        super().__init__(f"User {username!r} already has an API token ({prefix}\u2026).",
                         username=username, prefix=prefix)


class QuotaExceeded(AppError):
    """A caller past its own limit (aigen.generation.quotas): `rate_limit_exceeded`
    (requests per minute) or `insufficient_quota` (its token budget for the
    period), 429 with `retry_after` the seconds until the window frees."""

    status = 429

    def __init__(self, code: str, message: str, *, retry_after: float) -> None:
        super().__init__(message, type="requests" if code == "rate_limit_exceeded" else code)
        self.code = code
        self.retry_after = retry_after


class CallerThrottled(QuotaExceeded):
    """The door's own throttle (the generate rate), counted by the caller's
    admission script; each door answers it as its throttle's 429."""

    def __init__(self, retry_after: float) -> None:
        super().__init__("throttled", "Request was throttled.", retry_after=retry_after)
