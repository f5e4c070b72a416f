"""Buffered writing of `Generation` records, so a request (a cache hit above
all) never waits for a database round trip.

`generation_record(generation_row(...))` queues a record; a background thread per
process writes the queue with one `bulk_create` every
`AIGEN["RECORD_FLUSH_INTERVAL"]` seconds, or at once when
`RECORD_BUFFER_MAX` rows are waiting. With an interval of 0 there is no
thread: the request that fills the buffer writes it. The queue is written at exit too, so a
clean shutdown loses nothing; `generation_records_flush()` writes it now.

On failure: a batch that the database refuses is retried row by row; rows that
still fail are logged and dropped (a record must never break generation).
"""
from __future__ import annotations

import atexit
import logging
import os
import threading
from typing import Any

from django.db import DatabaseError, close_old_connections, connections, router, transaction
from django.utils import timezone

from aigen.conf import aigen_settings
from aigen.models import Generation

logger = logging.getLogger(__name__)


# The columns a record sets; everything else keeps its model default.
COLUMNS = ("created_at", "template_id", "section_id", "template_version", "cache_key", "cached", "stream",
           "provider", "model", "prompt_tokens", "completion_tokens", "total_tokens", "latency_ms",
           "user_id", "outcome", "error_code", "error")


def _insert(rows: list[dict[str, Any]]) -> None:
    """One multi-row INSERT through the cursor: a few microseconds a row, where
    `bulk_create` spends a hundred building model instances and SQL (this runs
    in the same process as the requests, so its CPU time is theirs too)."""
    alias = router.db_for_write(Generation)
    connection = connections[alias]
    columns = [Generation._meta.get_field(name).column for name in COLUMNS]
    sql = "INSERT INTO {} ({}) VALUES ({})".format(
        connection.ops.quote_name(Generation._meta.db_table),
        ", ".join(connection.ops.quote_name(c) for c in columns), ", ".join(["%s"] * len(columns)))
    adapt = connection.ops.adapt_datetimefield_value
    params = [tuple(adapt(row["created_at"]) if name == "created_at" else row[name] for name in COLUMNS)
              for row in rows]
    with transaction.atomic(using=alias), connection.cursor() as cursor:
        cursor.executemany(sql, params)


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


class GenerationLog:
    """The process's queue of unsaved records and the thread that writes it."""

    #: Test seam: with False no thread starts and rows wait for `flush()`.
    autostart = True

    def __init__(self) -> None:
        self._rows: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def add(self, row: dict[str, Any]) -> None:
        with self._lock:
            self._rows.append(row)
            pending = len(self._rows)
        threaded = self.autostart and float(aigen_settings.RECORD_FLUSH_INTERVAL) > 0
        if threaded:
            self._ensure_thread()
        if pending >= int(aigen_settings.RECORD_BUFFER_MAX):
            if threaded:
                self._wake.set()
            elif self.autostart:
                self.flush()

    def pending(self) -> int:
        with self._lock:
            return len(self._rows)

    def flush(self) -> int:
        """Write every queued row; returns how many were written."""
        with self._flush_lock:
            with self._lock:
                rows, self._rows = self._rows, []
            if not rows:
                return 0
            try:
                _insert(rows)
                return len(rows)
            except DatabaseError:
                logger.warning("aigen: writing %d generation records at once failed; writing one by one",
                               len(rows), exc_info=True)
            written = 0
            for row in rows:
                try:
                    Generation.objects.create(**row)
                    written += 1
                except DatabaseError as err:
                    logger.error("aigen: generation record dropped (%s): %s", err, row)
            return written

    def discard(self) -> None:
        """Drop queued rows unwritten (tests)."""
        with self._lock:
            self._rows = []

    def _ensure_thread(self) -> None:
        thread = self._thread
        if thread is not None and thread.is_alive() and self._pid == os.getpid():
            return
        with self._lock:
            if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
                return
            self._pid = os.getpid()  # a forked worker starts its own writer
            self._wake = threading.Event()
            self._thread = threading.Thread(target=self._run, name="aigen-records", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            self._wake.wait(float(aigen_settings.RECORD_FLUSH_INTERVAL))
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # keep the writer alive whatever happens
                logger.exception("aigen: writing generation records failed")
            finally:
                close_old_connections()

    def close(self) -> None:
        try:
            self.flush()
        except Exception:
            logger.exception("aigen: writing generation records at exit failed")


generation_log = GenerationLog()
atexit.register(generation_log.close)


def generation_record(row: dict[str, Any]) -> None:
    """Queue `row` (from `generation_row`) for writing (see module docstring)."""
    generation_log.add(row)


def generation_records_flush() -> int:
    """Write the queued records now; returns how many were written."""
    return generation_log.flush()
