"""Writing records off the hot path: an in-process buffer, a background
writer thread, and multi-row INSERTs.

`BufferedWriter.record(row)` appends to a list (no database round trip); a
daemon thread writes the buffer every `interval()` seconds, or as soon as
`max_rows()` rows wait. With an interval of 0 there is no thread: the call
that fills the buffer writes it, and `flush()` writes on demand. The buffer is
written at interpreter exit, so a clean shutdown loses nothing; a forked worker
starts its own thread.

On failure: a batch the database refuses is kept and retried on the next
flush; beyond ten times `max_rows()` the oldest rows are dropped, counted in
`dropped` and logged, so an outage cannot grow memory without bound. A record
never breaks the request that made it.

Used by generation records (aigen.generation.records) as is, and by the call log
(resilience.telemetry.calllog), whose writer overrides `flush()` to count
calls into rollups before writing and has its own outage behaviour.
"""
from __future__ import annotations

import atexit
import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from django.db import DatabaseError, close_old_connections, connections, models, router, transaction

logger = logging.getLogger(__name__)

#: Parameters per INSERT statement: within SQLite's (32,766) and PostgreSQL's (65,535) limits.
MAX_PARAMS = 30_000


def insert_rows(model: type[models.Model], columns: Sequence[str], rows: list[dict[str, Any]]) -> None:
    """INSERT `rows` (dicts keyed by field name) with one multi-row statement per chunk.

    The ORM's bulk_create prepares every field of every row through the field
    API, about a hundred microseconds a row here: more than the call it
    records. Values are adapted with the backend's own adapters instead.
    """
    alias = router.db_for_write(model)
    connection = connections[alias]
    fields = [model._meta.get_field(name) for name in columns]
    adapters: list[Callable[[Any], Any] | None] = []
    for field in fields:
        if isinstance(field, models.DateTimeField):
            adapters.append(connection.ops.adapt_datetimefield_value)
        elif isinstance(field, models.JSONField):
            adapters.append(lambda value, f=field: connection.ops.adapt_json_value(value, f.encoder))
        else:
            adapters.append(None)
    table = connection.ops.quote_name(model._meta.db_table)
    column_sql = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    one_row = f"({', '.join(['%s'] * len(fields))})"
    per_chunk = max(1, MAX_PARAMS // len(fields))
    with transaction.atomic(using=alias), connection.cursor() as cursor:
        for start in range(0, len(rows), per_chunk):
            chunk = rows[start:start + per_chunk]
            params = [value if adapt is None else adapt(value)
                      for row in chunk
                      for value, adapt in zip((row[name] for name in columns), adapters, strict=True)]
            cursor.execute(f"INSERT INTO {table} ({column_sql}) VALUES {', '.join([one_row] * len(chunk))}",
                           params)


class BufferedWriter:
    """A per-process buffer of rows and the thread that writes them (see the
    module docstring). `write(rows)` does the writing; `interval()` and
    `max_rows()` are read at use time, so settings changes apply."""

    #: Test seam: with False, no thread starts and nothing writes until `flush()`.
    autostart = True

    def __init__(self, name: str, *, write: Callable[[list[dict[str, Any]]], None],
                 interval: Callable[[], float], max_rows: Callable[[], int]) -> None:
        self.name = name
        self._write = write
        self._interval = interval
        self._max_rows = max_rows
        self._rows: deque[dict[str, Any]] = deque()
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self.dropped = 0
        atexit.register(self.close)

    def record(self, row: dict[str, Any]) -> None:
        with self._lock:
            self._rows.append(row)
            pending = len(self._rows)
        if not self.autostart:
            return
        thread = self._thread
        if thread is None or not thread.is_alive() or self._pid != os.getpid():
            thread = self._ensure_thread()
        if pending >= int(self._max_rows()):
            if thread is None:
                self.flush()
            elif not self._wake.is_set():  # one wake-up per flush, not one per row
                self._wake.set()

    def pending(self) -> int:
        return len(self._rows)

    def discard(self) -> int:
        """Drop buffered rows unwritten (tests); returns how many."""
        with self._lock:
            count = len(self._rows)
            self._rows.clear()
        return count

    def flush(self) -> int:
        """Write every buffered row now; returns how many were written."""
        with self._flush_lock:
            with self._lock:
                batch = list(self._rows)
                self._rows.clear()
            if not batch:
                return 0
            try:
                self._write(batch)
            except DatabaseError:
                logger.exception("%s: could not write %d rows; keeping them for the next flush",
                                 self.name, len(batch))
                self._keep(batch)
                return 0
            return len(batch)

    def close(self) -> None:
        try:
            self.flush()
        except Exception:
            logger.exception("%s: final write failed", self.name)

    def _keep(self, batch: list[dict[str, Any]]) -> None:
        with self._lock:
            self._rows.extendleft(reversed(batch))
            limit = int(self._max_rows()) * 10
            lost = 0
            while len(self._rows) > limit:
                self._rows.popleft()
                lost += 1
            self.dropped += lost
        if lost:
            logger.error("%s: dropped the %d oldest rows; the database has refused writes for too long",
                         self.name, lost)

    def _ensure_thread(self) -> threading.Thread | None:
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's thread is not ours
                self._pid, self._thread, self._wake = os.getpid(), None, threading.Event()
            if self._thread is not None and self._thread.is_alive():
                return self._thread
            if float(self._interval()) <= 0:
                self._thread = None
                return None
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()
            return self._thread

    def _loop(self) -> None:
        # The interval is re-read every round: set to 0, the writer stops (the
        # next record after a change back starts a new one).
        while (interval := float(self._interval())) > 0:
            self._wake.wait(interval)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # never let the writer die
                logger.exception("%s: write failed", self.name)
            finally:
                try:
                    close_old_connections()
                except Exception:
                    logger.debug("%s: closing connections failed", self.name, exc_info=True)
