"""Call logs: one row per logical upstream call, written off the hot path.

`call_log_record()` appends to an in-process buffer (no database round trip);
a background thread bulk-writes the buffer every `CALL_LOG_FLUSH_INTERVAL`
seconds, or as soon as `CALL_LOG_BUFFER_MAX` rows wait. `call_log_flush()`
writes synchronously (tests, shutdown); an exit hook flushes on a clean
shutdown so no row is lost. With `CALL_LOG_FLUSH_INTERVAL` set to 0 there is no
thread: rows wait for an explicit flush or a full buffer (flushed by the caller).

If the database refuses a batch, the rows are kept and retried on the next
flush (up to ten times the buffer size, beyond which the oldest are dropped
and the loss is logged): a database outage must not grow memory without bound.
"""
from __future__ import annotations

import atexit
import logging
import os
import threading
from collections import deque
from typing import Any

from django.db import DatabaseError, close_old_connections, connection, transaction

from resilience.conf import resilience_settings

logger = logging.getLogger(__name__)


class CallLogBuffer:
    def __init__(self) -> None:
        self._rows: deque[dict[str, Any]] = deque()
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self.dropped = 0

    def record(self, row: dict[str, Any]) -> None:
        with self._lock:
            self._rows.append(row)
            size = len(self._rows)
        if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
            self._ensure_thread()
        if size >= 64 and size >= resilience_settings.CALL_LOG_BUFFER_MAX:
            if self._thread is None:
                self.flush()
            elif not self._wake.is_set():  # one wake-up per flush, not one per call
                self._wake.set()

    def pending(self) -> int:
        return len(self._rows)

    def flush(self) -> int:
        """Write every buffered row now; returns how many were written."""
        with self._flush_lock:
            with self._lock:
                batch = list(self._rows)
                self._rows.clear()
            if not batch:
                return 0
            try:
                _write(batch)
            except DatabaseError:
                logger.exception("call logs: could not write %d rows, keeping them", len(batch))
                with self._lock:
                    self._rows.extendleft(reversed(batch))
                    limit = resilience_settings.CALL_LOG_BUFFER_MAX * 10
                    while len(self._rows) > limit:
                        self._rows.popleft()
                        self.dropped += 1
                return 0
            return len(batch)

    def _ensure_thread(self) -> None:
        interval = float(resilience_settings.CALL_LOG_FLUSH_INTERVAL)
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's thread is not ours
                self._pid, self._thread = os.getpid(), None
            if interval <= 0 or (self._thread is not None and self._thread.is_alive()):
                return
            self._thread = threading.Thread(target=self._loop, args=(interval,),
                                            name="call-log-writer", daemon=True)
            self._thread.start()

    def _loop(self, interval: float) -> None:
        while True:
            self._wake.wait(interval)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # never let the writer thread die
                logger.exception("call logs: flush failed")
            finally:
                close_old_connections()


CHUNK = 500  # rows per INSERT: 6,500 parameters, inside SQLite's and PostgreSQL's limits
COLUMNS = ("created_at", "upstream", "method", "path", "status", "outcome", "latency_ms", "attempts",
           "retries", "cache_hit", "breaker_state", "request_id", "error")


def _write(batch: list[dict[str, Any]]) -> None:
    """Insert rows with one multi-row INSERT per chunk, in one transaction.

    The ORM's bulk_create prepares every field of every row through the
    field API, which costs more per row than the whole call it logs; values
    are adapted here with the same backend adapters it would use.
    """
    from resilience.models import CallLog

    table = connection.ops.quote_name(CallLog._meta.db_table)
    columns = ", ".join(connection.ops.quote_name(c) for c in COLUMNS)
    one_row = f"({', '.join(['%s'] * len(COLUMNS))})"
    adapt_time = connection.ops.adapt_datetimefield_value
    adapt_json = connection.ops.adapt_json_value
    params = [
        (adapt_time(r["created_at"]), r["upstream"], r["method"], r["path"], r["status"], r["outcome"],
         r["latency_ms"], r["attempts"], adapt_json(r["retries"], None), r["cache_hit"],
         r["breaker_state"], r["request_id"], r["error"])
        for r in batch
    ]
    with transaction.atomic(), connection.cursor() as cursor:
        for start in range(0, len(params), CHUNK):
            chunk = params[start:start + CHUNK]
            cursor.execute(f"INSERT INTO {table} ({columns}) VALUES {', '.join([one_row] * len(chunk))}",
                           [value for row in chunk for value in row])


_buffer = CallLogBuffer()


def call_log_record(row: dict[str, Any]) -> None:
    """Queue one call-log row (the fields of resilience.models.CallLog)."""
    _buffer.record(row)


def call_log_flush() -> int:
    """Write buffered call logs now; returns the number written."""
    return _buffer.flush()


def call_log_discard() -> int:
    """Drop buffered rows unwritten (tests start from an empty buffer)."""
    with _buffer._lock:
        count = len(_buffer._rows)
        _buffer._rows.clear()
    return count


def call_log_pending() -> int:
    return _buffer.pending()


def _flush_at_exit() -> None:
    try:
        _buffer.flush()
    except Exception:
        logger.exception("call logs: final flush failed")


atexit.register(_flush_at_exit)
