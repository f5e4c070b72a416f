"""Generation records, written off the hot path: a request (a cache hit
above all) never waits for a database round trip.

`generation_record(generation_row(...))` queues a record; resilience's
`BufferedWriter` writes the queue with one multi-row INSERT every
`AIGEN["RECORD_FLUSH_INTERVAL"]` seconds, or at once when `RECORD_BUFFER_MAX`
rows wait, and at exit; `generation_records_flush()` writes it now. A batch
the database refuses is kept and retried, bounded (a record must never break
generation).
"""
from __future__ import annotations

from typing import Any

from django.utils import timezone

from aigen.conf import aigen_settings
from aigen.generation.metrics import generation_count
from aigen.models import Generation
from resilience.telemetry.buffered import BufferedWriter, insert_rows

# The columns a record sets; everything else keeps its model default.
COLUMNS = ("created_at", "template_id", "section_id", "template_version", "cache_key", "cached", "stream",
           "provider", "model", "prompt_tokens", "completion_tokens", "total_tokens", "latency_ms",
           "user_id", "outcome", "error_code", "error")


def generation_row(**values: Any) -> dict[str, Any]:
    """A record as `generation_record` takes it: every column, defaults filled in."""
    row = {"created_at": timezone.now(), "template_version": None, "cache_key": "", "cached": False,
           "stream": False, "prompt_tokens": None, "completion_tokens": None, "total_tokens": None,
           "latency_ms": 0, "user_id": None, "outcome": Generation.Outcome.OK.value, "error_code": "",
           "error": ""}
    row.update(values)
    unknown = set(row) - set(COLUMNS)
    if unknown:
        raise TypeError(f"unknown generation record fields: {sorted(unknown)}")
    return row


class GenerationLog(BufferedWriter):
    """The process's queue of unsaved records (its own class, so tests can
    switch its `autostart` seam without touching the call-log writer)."""


generation_log = GenerationLog(
    "aigen-records", write=lambda rows: insert_rows(Generation, COLUMNS, rows),
    interval=lambda: aigen_settings.RECORD_FLUSH_INTERVAL,
    max_rows=lambda: aigen_settings.RECORD_BUFFER_MAX,
)


def generation_record(row: dict[str, Any]) -> None:
    """Count `row` (from `generation_row`) in the Prometheus counters and queue
    it for writing (see module docstring)."""
    generation_count(row)
    generation_log.record(row)


def generation_records_flush() -> int:
    """Write the queued records now; returns how many were written."""
    return generation_log.flush()
