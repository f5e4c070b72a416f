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

from django.db import DatabaseError, close_old_connections

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
        if size >= resilience_settings.CALL_LOG_BUFFER_MAX:
            if self._thread is not None:
                self._wake.set()
            else:
                self.flush()

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
            from resilience.models import CallLog

            try:
                CallLog.objects.bulk_create([CallLog(**row) for row in batch], batch_size=500)
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
