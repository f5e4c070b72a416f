"""Call logs: one row per logical upstream call, written off the hot path.

`call_log_record()` queues a row in process (no database round trip); a
background thread writes them every `CALL_LOG_FLUSH_INTERVAL` seconds or as
soon as `CALL_LOG_BUFFER_MAX` wait, and an exit hook writes what is left on a
clean shutdown (see resilience.telemetry.buffered for the failure behaviour). With
`CALL_LOG_FLUSH_INTERVAL` 0 there is no thread: `call_log_flush()` writes.
"""
from __future__ import annotations

from typing import Any

from resilience.telemetry.buffered import BufferedWriter, insert_rows
from resilience.conf import resilience_settings

COLUMNS = ("created_at", "upstream", "method", "path", "status", "outcome", "latency_ms", "attempts",
           "retries", "cache_hit", "breaker_state", "request_id", "error")


def _write(rows: list[Any]) -> None:
    from resilience.models import CallLog

    # The client queues its call objects as they are; rows are built here.
    insert_rows(CallLog, COLUMNS, [r if isinstance(r, dict) else r.as_row() for r in rows])


_buffer = BufferedWriter(
    "call-log-writer", write=_write,
    interval=lambda: resilience_settings.CALL_LOG_FLUSH_INTERVAL,
    max_rows=lambda: resilience_settings.CALL_LOG_BUFFER_MAX,
)


def call_log_record(row: Any) -> None:
    """Queue one call-log row: a dict of resilience.models.CallLog fields, or
    an object whose `as_row()` gives one (built later, by the writer)."""
    _buffer.record(row)


def call_log_flush() -> int:
    """Write buffered call logs now; returns the number written."""
    return _buffer.flush()


def call_log_discard() -> int:
    """Drop buffered rows unwritten (tests start from an empty buffer)."""
    return _buffer.discard()

