"""Fixtures for telemetry tests: calls as the client records them."""
from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

#: A fixed moment in the middle of a minute; tests pass `now=` to the selectors.
NOW = datetime(2026, 3, 1, 12, 30, 30, tzinfo=UTC)


class Call:
    """A finished call shaped like the client's record (attributes + as_row())."""

    def __init__(self, *, upstream: str = "api", outcome: str = "ok", latency_ms: float = 10.0,
                 attempts: int = 1, status: int | None = 200, created: float | None = None,
                 cache_hit: bool = False, error: str = "", path: str = "/x", **extra: Any) -> None:
        self.upstream, self.outcome, self.latency_ms, self.attempts = upstream, outcome, latency_ms, attempts
        self.status, self.cache_hit, self.error, self.path = status, cache_hit, error, path
        self.created = NOW.timestamp() if created is None else created
        self.method, self.retries, self.breaker_state, self.request_id = "GET", [], "closed", ""
        for name, value in extra.items():  # endpoint, sample_rate
            setattr(self, name, value)

    def as_row(self) -> dict[str, Any]:
        return {"created_at": datetime.fromtimestamp(self.created, UTC), "upstream": self.upstream,
                "method": self.method, "path": self.path, "status": self.status, "outcome": self.outcome,
                "latency_ms": self.latency_ms, "attempts": self.attempts, "retries": self.retries,
                "cache_hit": self.cache_hit, "breaker_state": self.breaker_state,
                "request_id": self.request_id, "error": self.error}


