"""The call record: what one logical call did, as one immutable value that
becomes its call-log row and its `call_completed` signal in one place.

Steps produce a `Result`; the client turns it, with the call's timing and
request, into a `CallRecord` and hands it to `call_record_emit`.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from resilience.client.spec import RequestSpec
from resilience.models import Outcome
from resilience.signals import call_completed
from resilience.telemetry.calllog import call_log_record


@dataclass(frozen=True, slots=True)
class Result:
    """What the steps of a call decided (everything but timing and identity)."""

    outcome: Outcome
    status: int | None = None
    attempts: int = 0
    retries: tuple[dict[str, Any], ...] = ()
    cache_hit: bool = False
    breaker_state: str = ""
    error: str = ""
    endpoint: str = ""
    #: A streamed attempt's events (resilience.client.stream): (name, count) pairs.
    stream: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One logical call, as logged. `path` is computed (and redacted) when read:
    by the call-log writer, off the hot path."""

    upstream: str
    method: str
    spec: RequestSpec | None
    raw_path: str
    secret_names: frozenset[str]
    result: Result
    latency_ms: float
    created: float
    request_id: str
    sample_rate: float = 1.0
    endpoint: str = ""
    #: The user the call was made for (resilience.client.context.current_caller), if known.
    caller: int | None = None

    @property
    def path(self) -> str:
        if self.spec is not None:
            return self.spec.path_for_log(self.secret_names)
        return self.raw_path

    # The call-log fields, as attributes (signal receivers read these).
    @property
    def status(self) -> int | None:
        return self.result.status

    @property
    def outcome(self) -> Outcome:
        return self.result.outcome

    @property
    def attempts(self) -> int:
        return self.result.attempts

    @property
    def retries(self) -> list[dict[str, Any]]:
        return list(self.result.retries)

    @property
    def cache_hit(self) -> bool:
        return self.result.cache_hit

    @property
    def breaker_state(self) -> str:
        return self.result.breaker_state

    @property
    def error(self) -> str:
        return self.result.error

    def as_row(self) -> dict[str, Any]:
        """The CallLog fields (built by the writer, off the hot path)."""
        result = self.result
        return {
            "created_at": datetime.fromtimestamp(self.created, UTC), "upstream": self.upstream,
            "method": self.method, "path": self.path[:1000], "status": result.status,
            "outcome": str(result.outcome), "latency_ms": self.latency_ms, "attempts": result.attempts,
            "retries": list(result.retries), "cache_hit": result.cache_hit,
            "breaker_state": result.breaker_state, "request_id": self.request_id, "error": result.error[:500],
            "endpoint": self.endpoint, "caller_id": self.caller,
        }


def call_record_emit(record: CallRecord, *, sender: Any) -> None:
    """Queue the call-log row and tell the signal's receivers (metrics)."""
    call_log_record(record)
    call_completed.send(sender=sender, call=record)
