"""Per-request context that upstream calls pick up (the request id)."""
from contextvars import ContextVar

current_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
