"""Rollups: every call counted per (upstream, endpoint, minute) and per hour.

`RollupDelta` is what one process has counted for one bucket and not yet
written. `rollups_upsert()` adds a batch of deltas to the stored rows with one
multi-row `INSERT ... ON CONFLICT (upstream, start, endpoint) DO UPDATE`
statement per table (chunked only past the parameter limit):

    counters:   calls = t.calls + EXCLUDED.calls, ...
    histograms: latency = the per-key sum of t.latency and EXCLUDED.latency,
                computed in SQL (jsonb_each_text + jsonb_object_agg on
                PostgreSQL, json_each + json_group_object on SQLite)

so any number of workers merge into the same rows without reading them first
and without losing a count: PostgreSQL locks the conflicting row and
evaluates the update on its latest version; SQLite has one writer at a time.
Rows are sent sorted by key, so two workers upserting overlapping batches lock
rows in the same order and cannot deadlock.

Hour and day rows are written from the same deltas in the same transaction
(regrouped by hour and by UTC day), so they are always complete, the current
hour and day included, with no rollup task to schedule or to catch up after
an outage: three statements per flush, whatever the traffic.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from django.db import connections, models, router

from resilience.models import CACHED_OUTCOMES, FAILED_OUTCOMES, DayRollup, HourRollup, MinuteRollup, Outcome
from resilience.telemetry import histogram
from resilience.telemetry.buffered import MAX_PARAMS

FAILED = frozenset(str(outcome) for outcome in FAILED_OUTCOMES)
CACHED = frozenset(str(outcome) for outcome in CACHED_OUTCOMES)
STALE = str(Outcome.STALE)
BREAKER_OPEN = str(Outcome.BREAKER_OPEN)
COUNTERS = ("calls", "errors", "cache_hits", "stale", "breaker_rejections", "retries", "reached")
#: Count maps merged per key in SQL: outcomes, the latency histogram, and the
#: advisor's per-call signals (resilience.telemetry.counters).
COUNT_MAPS = ("outcomes", "latency", "signals")
COLUMNS = ("upstream", "endpoint", "start", *COUNTERS, *COUNT_MAPS)

#: (upstream, endpoint, bucket start as epoch seconds)
Key = tuple[str, str, int]


@dataclass
class RollupDelta:
    """Counts of one bucket not yet written (see the Rollup model's fields)."""

    calls: int = 0
    errors: int = 0
    cache_hits: int = 0
    stale: int = 0
    breaker_rejections: int = 0
    retries: int = 0
    reached: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    latency: dict[int, int] = field(default_factory=dict)
    signals: dict[str, int] = field(default_factory=dict)

    def add_call(self, *, outcome: str, attempts: int, latency_ms: float, cache_hit: bool) -> None:
        self.calls += 1
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        if outcome in FAILED:
            self.errors += 1
        if cache_hit or outcome in CACHED:
            self.cache_hits += 1
        if outcome == STALE:
            self.stale += 1
        elif outcome == BREAKER_OPEN:
            self.breaker_rejections += 1
        if attempts > 0:
            # Latency of calls that reached the upstream: cache hits and
            # rejections answer in microseconds and would flatter it.
            self.reached += 1
            self.retries += attempts - 1
            histogram.add(self.latency, latency_ms)

    def merge(self, other: RollupDelta) -> RollupDelta:
        for name in COUNTERS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for outcome, count in other.outcomes.items():
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + count
        histogram.merge(self.latency, other.latency)
        for name, count in other.signals.items():
            self.signals[name] = self.signals.get(name, 0) + count
        return self


def minute_of(epoch: float) -> int:
    return int(epoch // 60) * 60


def hour_of(epoch: float) -> int:
    return int(epoch // 3600) * 3600


def day_of(epoch: float) -> int:
    return int(epoch // 86400) * 86400


def regrouped(deltas: Mapping[Key, RollupDelta], step: int) -> dict[Key, RollupDelta]:
    """Minute deltas regrouped into `step`-second buckets (inputs left alone)."""
    groups: dict[Key, RollupDelta] = {}
    for (upstream, endpoint, start), delta in deltas.items():
        key = (upstream, endpoint, int(start // step) * step)
        groups.setdefault(key, RollupDelta()).merge(delta)
    return groups


def _json_sum_sql(vendor: str, old: str, new: str) -> str:
    """SQL for the per-key sum of two JSON objects of counts."""
    if vendor == "postgresql":
        return ("(SELECT COALESCE(jsonb_object_agg(k, n), '{}'::jsonb) FROM ("
                "SELECT k, SUM(v) AS n FROM ("
                f"SELECT key AS k, value::bigint AS v FROM jsonb_each_text({old}) "
                f"UNION ALL SELECT key, value::bigint FROM jsonb_each_text({new})"
                ") AS u GROUP BY k) AS s)")
    if vendor == "sqlite":
        return ("(SELECT COALESCE(json_group_object(k, n), '{}') FROM ("
                "SELECT k, SUM(v) AS n FROM ("
                f"SELECT key AS k, value AS v FROM json_each({old}) "
                f"UNION ALL SELECT key, value FROM json_each({new})"
                ") GROUP BY k))")
    raise NotImplementedError(f"rollup upserts support PostgreSQL and SQLite, not {vendor}")


def upsert_sql(model: type[models.Model], connection: Any, rows: int) -> str:
    """The `INSERT ... ON CONFLICT DO UPDATE` adding `rows` rows' counts."""
    q = connection.ops.quote_name
    table = q(model._meta.db_table)
    fields = [model._meta.get_field(name) for name in COLUMNS]
    one_row = f"({', '.join(['%s'] * len(fields))})"
    updates = [f"{q(name)} = t.{q(name)} + EXCLUDED.{q(name)}" for name in COUNTERS]
    updates += [f"{q(name)} = {_json_sum_sql(connection.vendor, f't.{q(name)}', f'EXCLUDED.{q(name)}')}"
                for name in COUNT_MAPS]
    return (f"INSERT INTO {table} AS t ({', '.join(q(f.column) for f in fields)}) "
            f"VALUES {', '.join([one_row] * rows)} "
            f"ON CONFLICT ({q('upstream')}, {q('start')}, {q('endpoint')}) "
            f"DO UPDATE SET {', '.join(updates)}")


def rollups_upsert(model: type[models.Model], deltas: Mapping[Key, RollupDelta]) -> None:
    """Add `deltas` to `model`'s rows (MinuteRollup or HourRollup); the caller
    holds the transaction."""
    if not deltas:
        return
    connection = connections[router.db_for_write(model)]
    json_field = model._meta.get_field("latency")

    def adapt_json(value: Any) -> Any:
        return connection.ops.adapt_json_value(value, json_field.encoder)

    params_per_row = len(COLUMNS)
    per_chunk = max(1, MAX_PARAMS // params_per_row)
    items = sorted(deltas.items())  # one lock order for every worker: no deadlocks
    with connection.cursor() as cursor:
        for first in range(0, len(items), per_chunk):
            chunk = items[first:first + per_chunk]
            params: list[Any] = []
            for (upstream, endpoint, start), delta in chunk:
                params += [upstream, endpoint, connection.ops.adapt_datetimefield_value(
                    datetime.fromtimestamp(start, UTC)), *(getattr(delta, name) for name in COUNTERS),
                    adapt_json(dict(delta.outcomes)), adapt_json(histogram.to_json(delta.latency)),
                    adapt_json(dict(delta.signals))]
            cursor.execute(upsert_sql(model, connection, len(chunk)), params)


def rollups_write(deltas: Mapping[Key, RollupDelta]) -> None:
    """Add minute deltas to the minute rows and to their hour and day rows."""
    rollups_upsert(MinuteRollup, deltas)
    rollups_upsert(HourRollup, regrouped(deltas, 3600))
    rollups_upsert(DayRollup, regrouped(deltas, 86400))


def totals(rows: Iterable[Mapping[str, Any]]) -> RollupDelta:
    """Rollup rows (dicts with the Rollup fields) summed into one delta."""
    total = RollupDelta()
    counts = dict.fromkeys(COUNTERS, 0)
    latency: dict[str, int] = {}  # JSON keys merged as they come; converted once, at the end
    for row in rows:
        for name in COUNTERS:
            counts[name] += row[name] or 0
        for outcome, count in (row["outcomes"] or {}).items():
            total.outcomes[outcome] = total.outcomes.get(outcome, 0) + count
        for name, count in (row.get("signals") or {}).items():
            total.signals[name] = total.signals.get(name, 0) + count
        get = latency.get
        for key, count in (row["latency"] or {}).items():
            latency[key] = get(key, 0) + count
    for name, value in counts.items():
        setattr(total, name, value)
    histogram.merge(total.latency, latency)
    return total
