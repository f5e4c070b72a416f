"""Call logs and rollups, written off the hot path.

`call_log_record(call)` appends the call to an in-process buffer: no database
round trip, no row built. The writer (a background thread every
`CALL_LOG_FLUSH_INTERVAL` seconds or as soon as `CALL_LOG_BUFFER_MAX` calls
wait, an exit hook on clean shutdown, or `call_log_flush()`) then

1. counts every call in the minute rollup of its (upstream, endpoint, minute)
   (resilience.telemetry.rollups);
2. keeps a call-log row for every failed, retried, stale or rejected call (and
   any call that ended in an HTTP status >= 400 or carries an error), and
   for each successful one (`ok`, `cache_hit`, `shared`) with probability
   `log_sample_rate` of its upstream (`call.sample_rate` when the client sets
   it, else the policy row; an upstream with no policy row keeps them all);
   The advisor's few extra counts (retries that recovered, 429s, which limit
   rejected a call, repeated cacheable fetches) go into the same rows'
   `signals` (resilience.telemetry.counters);
3. writes, in one transaction, one upsert for the minute rows, one for the
   hour rows and one multi-row INSERT for the kept rows.

With `CALL_LOG_FLUSH_INTERVAL` 0 there is no thread: `call_log_flush()` writes.

Breaker transitions (`BreakerEvent` rows) take the same road in a writer of
their own: the process that made a transition queues its record
(resilience.client.receivers), so no request waits on that write; `call_log_flush()`
writes them too.

On failure (database unreachable or refusing): nothing is counted twice and,
within bounds, nothing is lost. The rollup counts stay in memory and later
calls of the same minute merge into them, so memory grows with the number of
distinct (upstream, endpoint, minute) keys, not with traffic; past
`ROLLUP_PENDING_MAX` keys the oldest minutes are dropped, their calls counted
in `lost_calls` and logged. Kept rows wait too, up to ten times
`CALL_LOG_BUFFER_MAX`; past that the oldest are dropped, counted in `dropped`
and logged. One log line when writes start failing, one when they succeed
again with what was carried over.
"""
from __future__ import annotations

import logging
import random
from collections import deque
from datetime import UTC
from typing import Any

from django.db import DatabaseError, connections, router, transaction

from resilience.conf import resilience_settings
from resilience.models import DEFAULT_LOG_SAMPLE_RATE, BreakerEvent, CallLog, Outcome, Upstream
from resilience.telemetry.buffered import BufferedWriter, insert_rows
from resilience.telemetry.counters import signals_count
from resilience.telemetry.rollups import Key, RollupDelta, minute_of, rollups_write

logger = logging.getLogger(__name__)

COLUMNS = ("created_at", "upstream", "method", "path", "status", "outcome", "latency_ms", "attempts",
           "retries", "cache_hit", "breaker_state", "request_id", "error", "endpoint", "caller_id")
#: Outcomes of a successful call: their rows are sampled. Every other outcome keeps its row.
SAMPLED_OUTCOMES = frozenset(str(o) for o in (Outcome.OK, Outcome.CACHE_HIT, Outcome.SHARED))


def _fields(call: Any) -> tuple[str, str, float, str, int, float, bool, int | None, str, float | None]:
    """(upstream, endpoint, created epoch, outcome, attempts, latency_ms,
    cache_hit, status, error, sample_rate) of a call object or a row dict."""
    if isinstance(call, dict):
        created = call["created_at"]
        if created.tzinfo is None:
            created = created.replace(tzinfo=UTC)
        return (call["upstream"], call.get("endpoint") or "", created.timestamp(), str(call["outcome"]),
                int(call.get("attempts") or 0), float(call.get("latency_ms") or 0.0),
                bool(call.get("cache_hit")), call.get("status"), call.get("error") or "",
                call.get("sample_rate"))
    return (call.upstream, getattr(call, "endpoint", "") or "", call.created, str(call.outcome),
            call.attempts, call.latency_ms, call.cache_hit, call.status, call.error,
            getattr(call, "sample_rate", None))


def row_required(*, outcome: str, attempts: int, status: int | None, error: str) -> bool:
    """Whether a call keeps its row whatever the sample rate: it failed, was
    retried, was answered stale or was rejected."""
    return outcome not in SAMPLED_OUTCOMES or attempts > 1 or (status or 0) >= 400 or bool(error)


class CallLogWriter(BufferedWriter):
    """The process's buffer of finished calls, their rollup counts and kept
    rows not yet written (see the module docstring)."""

    #: Test seam: a uniform number in [0, 1) per successful call, for sampling.
    random = staticmethod(random.random)

    def __init__(self, name: str) -> None:
        super().__init__(name, write=self._write_batch,
                         interval=lambda: resilience_settings.CALL_LOG_FLUSH_INTERVAL,
                         max_rows=lambda: resilience_settings.CALL_LOG_BUFFER_MAX)
        self._deltas: dict[Key, RollupDelta] = {}
        self._kept: deque[dict[str, Any]] = deque()
        self._rates: dict[str, float] = {}  # last known log_sample_rate per upstream
        self._failing = False
        self.lost_calls = 0
        self.sampled_out = 0

    # -- folding a batch -------------------------------------------------------------------
    def _sample_rates(self, names: set[str]) -> dict[str, float]:
        """log_sample_rate of each named upstream: from the policy rows (one
        query), the last known rate while the database is down, 1.0 for an
        upstream without a policy row."""
        if not names:
            return {}
        try:
            found = dict(Upstream.objects.filter(name__in=names).values_list("name", "log_sample_rate"))
        except DatabaseError:
            return {name: self._rates.get(name, DEFAULT_LOG_SAMPLE_RATE) for name in names}
        self._rates.update(found)
        return {name: found.get(name, 1.0) for name in names}

    def _fold(self, batch: list[Any]) -> None:
        fields = [_fields(call) for call in batch]
        rates = self._sample_rates({f[0] for f in fields if f[9] is None})
        deltas = self._deltas
        for call, (upstream, endpoint, created, outcome, attempts, latency_ms, cache_hit, status, error,
                   rate) in zip(batch, fields, strict=True):
            key = (upstream, endpoint, minute_of(created))
            delta = deltas.get(key)
            if delta is None:
                delta = deltas[key] = RollupDelta()
            delta.add_call(outcome=outcome, attempts=attempts, latency_ms=latency_ms, cache_hit=cache_hit)
            signals_count(delta.signals, call, outcome=outcome, attempts=attempts, status=status,
                          created=created)
            if not row_required(outcome=outcome, attempts=attempts, status=status, error=error):
                rate = rates[upstream] if rate is None else rate
                if rate < 1.0 and (rate <= 0.0 or self.random() >= rate):
                    self.sampled_out += 1
                    continue
            # Rows are built here, for kept calls only (path redaction is not free).
            self._kept.append({"endpoint": endpoint, "caller_id": None,
                               **(call if isinstance(call, dict) else call.as_row())})

    # -- writing ---------------------------------------------------------------------------
    def _write_batch(self, rows: list[Any]) -> None:
        # The base class's write hook; this writer's flush() folds and writes itself.
        raise NotImplementedError

    def _write_all(self, deltas: dict[Key, RollupDelta], rows: list[dict[str, Any]]) -> None:
        with transaction.atomic(using=router.db_for_write(CallLog)):
            rollups_write(deltas)
            if rows:
                insert_rows(CallLog, COLUMNS, rows)

    def flush(self) -> int:
        """Count buffered calls and write every pending count and row now;
        returns how many calls' counts were written (0 when the write failed)."""
        with self._flush_lock:
            with self._lock:
                batch = list(self._rows)
                self._rows.clear()
            if batch:
                self._fold(batch)
            if not self._deltas and not self._kept:
                return 0
            rows = list(self._kept)
            calls = sum(delta.calls for delta in self._deltas.values())
            try:
                self._write_all(self._deltas, rows)
            except DatabaseError as err:
                connection = connections[router.db_for_write(CallLog)]
                if not connection.in_atomic_block:  # a broken connection is reopened on the next try
                    connection.close_if_unusable_or_obsolete()
                self._bound()
                if not self._failing:
                    self._failing = True
                    logger.error("%s: database write failed (%s); keeping rollup counts and rows in memory "
                                 "until it succeeds", self.name, err)
                return 0
            if self._failing:
                self._failing = False
                logger.warning("%s: database writes succeed again; wrote %d calls' counts and %d rows "
                               "carried over", self.name, calls, len(rows))
            self._deltas = {}
            self._kept.clear()
            return calls

    def _bound(self) -> None:
        limit = int(resilience_settings.ROLLUP_PENDING_MAX)
        if len(self._deltas) > limit:
            lost_calls = 0
            for key in sorted(self._deltas, key=lambda k: k[2])[:len(self._deltas) - limit]:
                lost_calls += self._deltas.pop(key).calls
            self.lost_calls += lost_calls
            logger.error("%s: dropped the oldest minutes' counts (%d calls): more than ROLLUP_PENDING_MAX=%d "
                         "minutes are waiting for the database", self.name, lost_calls, limit)
        limit = int(resilience_settings.CALL_LOG_BUFFER_MAX) * 10
        lost = 0
        while len(self._kept) > limit:
            self._kept.popleft()
            lost += 1
        if lost:
            self.dropped += lost
            logger.error("%s: dropped the %d oldest call-log rows (%d so far); their calls are still counted "
                         "in the rollups", self.name, lost, self.dropped)

    def pending(self) -> int:
        """Calls buffered or counted and not yet written."""
        return len(self._rows) + sum(delta.calls for delta in self._deltas.values())

    def discard(self) -> int:
        """Drop buffered calls, counts and rows unwritten (tests); returns how
        many calls were buffered."""
        with self._flush_lock:
            count = super().discard()
            self._deltas = {}
            self._kept.clear()
            self._failing = False
            return count


_writer = CallLogWriter("call-log-writer")


def _write_events(rows: list[Any]) -> None:
    insert_rows(BreakerEvent, ("created_at", "upstream", "from_state", "to_state", "reason"), rows)


_events = BufferedWriter(
    "breaker-event-writer", write=_write_events,
    interval=lambda: resilience_settings.CALL_LOG_FLUSH_INTERVAL,
    max_rows=lambda: resilience_settings.CALL_LOG_BUFFER_MAX,
)


def breaker_event_record(row: dict[str, Any]) -> None:
    """Queue one BreakerEvent row (a dict of its fields)."""
    _events.record(row)


def call_log_record(call: Any) -> None:
    """Queue one finished call: an object with the call-log fields as
    attributes and `as_row()` (the client's), or a dict of CallLog fields.
    Optional: `endpoint` (rollup key, "" by default) and `sample_rate`."""
    _writer.record(call)


def call_log_flush() -> int:
    """Count and write buffered calls (and breaker events) now; returns how
    many calls were written."""
    _events.flush()
    return _writer.flush()


def call_log_discard() -> int:
    """Drop buffered calls unwritten (tests start from an empty buffer)."""
    _events.discard()
    return _writer.discard()


def call_log_writer() -> CallLogWriter:
    """The process's writer (its counters: `dropped`, `lost_calls`, `sampled_out`)."""
    return _writer
