"""Retention: delete call-log rows, minute, hour and day rollups older than
their settings (`CALL_LOG_RETENTION_DAYS`, `ROLLUP_MINUTE_RETENTION_DAYS`,
`ROLLUP_HOUR_RETENTION_DAYS`, `ROLLUP_DAY_RETENTION_DAYS`), and the tables
other apps register (`prune_target_register`: aigen's generation records,
`AIGEN["GENERATION_RETENTION_DAYS"]`), in bounded batches.

Each batch is one `DELETE ... WHERE id IN (SELECT id ... WHERE <time> <
cutoff LIMIT n)` in its own short transaction (autocommit), driven by the
time column's index: no statement holds the table for long, no row is loaded
into Python, and memory stays flat whether a table holds a thousand old rows
or ten million. A prune interrupted half way keeps what it deleted and
resumes on the next run.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import connections, models, router
from django.utils import timezone

from resilience.conf import resilience_settings
from resilience.models import CallLog, DayRollup, HourRollup, MinuteRollup
from resilience.telemetry.calllog import call_log_flush


@dataclass(frozen=True)
class PruneTarget:
    """A table with retention: rows whose `time_field` is older than the
    setting `setting` (days; read from `settings`, RESILIENCE by default) go."""

    label: str
    model: type[models.Model]
    time_field: str
    setting: str
    settings: Any = None

    def retention(self) -> timedelta:
        return timedelta(days=getattr(self.settings or resilience_settings, self.setting))


TARGETS = {
    "rows": PruneTarget("call log", CallLog, "created_at", "CALL_LOG_RETENTION_DAYS"),
    "minutes": PruneTarget("minute rollup", MinuteRollup, "start", "ROLLUP_MINUTE_RETENTION_DAYS"),
    "hours": PruneTarget("hour rollup", HourRollup, "start", "ROLLUP_HOUR_RETENTION_DAYS"),
    "days": PruneTarget("day rollup", DayRollup, "start", "ROLLUP_DAY_RETENTION_DAYS"),
}


def prune_target_register(kind: str, target: PruneTarget) -> None:
    """Give another app's table retention through the same prune (command and
    scheduled job): aigen registers its generation records."""
    TARGETS[kind] = target


def retention_of(kind: str) -> timedelta:
    """The configured retention of `kind` (`rows`, `minutes`, `hours`, `days`, and
    whatever other apps registered, e.g. `generations`)."""
    return TARGETS[kind].retention()


def table_prune(model: type[models.Model], *, time_field: str, before: datetime, batch_size: int,
                progress: Callable[[int], None] | None = None) -> int:
    """Delete `model` rows whose `time_field` is before `before`, `batch_size`
    at a time; `progress(deleted so far)` after each batch. Returns the count."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    alias = router.db_for_write(model)
    connection = connections[alias]
    q = connection.ops.quote_name
    table, pk = q(model._meta.db_table), q(model._meta.pk.column)
    column = q(model._meta.get_field(time_field).column)
    sql = (f"DELETE FROM {table} WHERE {pk} IN "
           f"(SELECT {pk} FROM {table} WHERE {column} < %s LIMIT %s)")
    cutoff = connection.ops.adapt_datetimefield_value(before)
    deleted = 0
    while True:
        with connection.cursor() as cursor:
            cursor.execute(sql, [cutoff, batch_size])
            count = cursor.rowcount
        deleted += count
        if progress is not None and count:
            progress(deleted)
        if count < batch_size:
            return deleted


def telemetry_prune(*, older_than: dict[str, timedelta] | None = None, batch_size: int | None = None,
                    now: datetime | None = None,
                    progress: Callable[[str, int], None] | None = None) -> dict[str, int]:
    """Apply retention to call-log rows, minute, hour and day rollups and the
    registered tables.

    `older_than` maps `rows`/`minutes`/`hours`/`days`/`generations` to an age (missing ones: their
    setting); `batch_size` defaults to `PRUNE_BATCH_SIZE`. Returns the rows
    deleted per kind. Flushes this process's buffered calls first, so nothing
    written after the prune is older than it.
    """
    call_log_flush()
    now = now or timezone.now()
    ages = {kind: (older_than or {}).get(kind) or retention_of(kind) for kind in TARGETS}
    size = int(batch_size or resilience_settings.PRUNE_BATCH_SIZE)
    result = {}
    for kind, target in TARGETS.items():
        report = (lambda n, kind=kind: progress(kind, n)) if progress else None
        result[kind] = table_prune(target.model, time_field=target.time_field, before=now - ages[kind],
                                   batch_size=size, progress=report)
    return result
