"""Statistics benchmark: every reader's time on PostgreSQL as traffic grows.

For each traffic level (1e5, 1e6, 1e7 calls a day per upstream) the rollup
tables are filled the way that traffic fills them at the default retention:
minute rows for `ROLLUP_MINUTE_RETENTION_DAYS`, hour rows for
`ROLLUP_HOUR_RETENTION_DAYS` and day rows for `ROLLUP_DAY_RETENTION_DAYS`,
for the measured upstream and nine neighbours (so the indexes are ten times
bigger than one upstream needs). Each minute's histogram is built from that
minute's real number of calls (a log-normal body, a slow mode, timeouts), so
busier minutes have the wider histograms they would have. Then each reader is timed (median of warm repeats):
`upstream_stats` for 5m, 1h, 24h and 7d (the API, admin and `manage.py
upstreams` call it), the dashboard chart and the whole dashboard snapshot.

Target: every reader at most 20 ms at 1e7 calls/day, and flat in traffic
(the ratio to 1e5 stays near 1). Also prints storage: rollup bytes per day,
and call-log bytes per million successful calls at the default sample rate.

Needs PostgreSQL: `BENCH_DATABASE_URL` (default
postgres://postgres@127.0.0.1:5432/rsl_bench_stats, created if missing).
`BENCH_STATS_LEVELS=1e5,1e6` picks the levels.
"""
from __future__ import annotations

import math
import os
import random
import statistics
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from bench.common import fmt_time, table, verdict

NEIGHBOURS = 9
DISTINCT_MINUTES = 60  # distinct minute histograms per level, reused round-robin
TARGET = 0.020


def _ensure_database(url: str) -> None:
    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin = parts._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def _latency(rng: random.Random) -> float:
    roll = rng.random()
    if roll < 0.90:
        return rng.lognormvariate(math.log(80), 0.5)
    if roll < 0.99:
        return rng.lognormvariate(math.log(600), 0.7)
    return rng.uniform(4900, 5100)  # timeouts near the deadline


def _minute_deltas(per_minute: int, rng: random.Random) -> list:
    from resilience.telemetry import histogram
    from resilience.telemetry.rollups import RollupDelta

    deltas = []
    for _ in range(DISTINCT_MINUTES):
        delta = RollupDelta()
        delta.calls = per_minute
        counts = {"ok": 0, "cache_hit": 0, "http_error": 0, "timeout": 0, "breaker_open": 0}
        for _ in range(per_minute):
            roll = rng.random()
            outcome = ("ok" if roll < 0.95 else "cache_hit" if roll < 0.98 else "http_error" if roll < 0.99
                       else "timeout" if roll < 0.995 else "breaker_open")
            counts[outcome] += 1
            if outcome in ("ok", "http_error", "timeout"):
                delta.reached += 1
                histogram.add(delta.latency, _latency(rng))
        delta.errors = counts["http_error"] + counts["timeout"] + counts["breaker_open"]
        delta.cache_hits = counts["cache_hit"]
        delta.breaker_rejections = counts["breaker_open"]
        delta.retries = counts["http_error"]
        delta.outcomes = {k: v for k, v in counts.items() if v}
        deltas.append(delta)
    return deltas


def _fill(calls_per_day: float, now: datetime) -> dict[str, int]:
    from django.db import connection, transaction

    from resilience.conf import resilience_settings
    from resilience.models import DayRollup, HourRollup, MinuteRollup
    from resilience.telemetry.rollups import RollupDelta, rollups_upsert

    models = (MinuteRollup, HourRollup, DayRollup)
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {', '.join(m._meta.db_table for m in models)}")
    rng = random.Random(int(calls_per_day))
    per_minute = max(1, round(calls_per_day / 1440))
    minutes = _minute_deltas(per_minute, rng)
    hours = []
    for index in range(DISTINCT_MINUTES // 4):
        hour = RollupDelta()
        for offset in range(60):
            hour.merge(minutes[(index + offset) % DISTINCT_MINUTES])
        hours.append(hour)
    days = []
    for index in range(len(hours)):
        day = RollupDelta()
        for offset in range(24):
            day.merge(hours[(index + offset) % len(hours)])
        days.append(day)
    names = ["bench", *[f"neighbour-{i}" for i in range(NEIGHBOURS)]]
    end_minute = int(now.timestamp() // 60) * 60
    minute_count = int(resilience_settings.ROLLUP_MINUTE_RETENTION_DAYS) * 1440
    hour_count = int(resilience_settings.ROLLUP_HOUR_RETENTION_DAYS) * 24
    end_hour = int(now.timestamp() // 3600) * 3600
    end_day = int(now.timestamp() // 86400) * 86400
    day_count = int(resilience_settings.ROLLUP_DAY_RETENTION_DAYS)
    for name in names:
        batch = {}
        for i in range(minute_count):
            batch[(name, "", end_minute - 60 * i)] = minutes[i % DISTINCT_MINUTES]
            if len(batch) == 1000:
                with transaction.atomic():
                    rollups_upsert(MinuteRollup, batch)
                batch = {}
        with transaction.atomic():
            rollups_upsert(MinuteRollup, batch)
            rollups_upsert(HourRollup, {(name, "", end_hour - 3600 * i): hours[i % len(hours)]
                                        for i in range(hour_count)})
            rollups_upsert(DayRollup, {(name, "", end_day - 86400 * i): days[i % len(days)]
                                       for i in range(day_count)})
    sizes = {}
    with connection.cursor() as cursor:
        for model in models:
            cursor.execute(f"VACUUM ANALYZE {model._meta.db_table}")
            cursor.execute("SELECT pg_total_relation_size(%s)", [model._meta.db_table])
            sizes[model.__name__] = cursor.fetchone()[0]
    return {"minute_rows": minute_count * len(names), "hour_rows": hour_count * len(names),
            "day_rows": day_count * len(names), "minute_bytes": sizes["MinuteRollup"],
            "hour_bytes": sizes["HourRollup"], "day_bytes": sizes["DayRollup"]}


def _time(fn, repeats: int = 25) -> float:
    for _ in range(3):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def _readers(now: datetime) -> dict[str, object]:
    from resilience.ops.dashboard import dashboard_snapshot
    from resilience.telemetry.selectors import WINDOWS, upstream_stats
    from resilience.telemetry.timeseries import upstream_timeseries

    readers = {f"stats {label}": (lambda w=window: upstream_stats(name="bench", window=w, now=now))
               for label, window in WINDOWS.items()}
    readers["dashboard chart (1 h)"] = lambda: upstream_timeseries(name="bench", now=now)
    readers["dashboard snapshot (1 upstream)"] = lambda: dashboard_snapshot(now=now)
    return readers


def _call_log_bytes_per_million(now: datetime) -> tuple[int, float]:
    """Bytes of the call-log rows one million successful calls leave at the
    default sample rate (rows and indexes, measured on 10,000 rows)."""
    from django.db import connection

    from resilience.models import DEFAULT_LOG_SAMPLE_RATE, CallLog
    from resilience.telemetry.buffered import insert_rows
    from resilience.telemetry.calllog import COLUMNS

    kept = round(1_000_000 * DEFAULT_LOG_SAMPLE_RATE)
    rng = random.Random(5)
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {CallLog._meta.db_table}")
    rows = [{"created_at": now - timedelta(seconds=i * 8.64), "upstream": "bench", "method": "GET",
             "path": f"/v1/items/{rng.randrange(10**6)}?page={rng.randrange(50)}", "status": 200,
             "outcome": "ok", "latency_ms": round(_latency(rng), 3), "attempts": 1, "retries": [],
             "cache_hit": False, "breaker_state": "closed", "request_id": f"{rng.getrandbits(64):016x}",
             "error": "", "caller_id": None} for i in range(kept)]
    insert_rows(CallLog, COLUMNS, rows)
    with connection.cursor() as cursor:
        cursor.execute(f"VACUUM ANALYZE {CallLog._meta.db_table}")
        cursor.execute("SELECT pg_total_relation_size(%s)", [CallLog._meta.db_table])
        size = cursor.fetchone()[0]
        cursor.execute(f"TRUNCATE {CallLog._meta.db_table}")
    return size, DEFAULT_LOG_SAMPLE_RATE


def _prune(rows: int, now: datetime) -> tuple[float, int, int]:
    """Fill `rows` old call-log rows (in SQL) and time `prune_telemetry`'s
    batched delete of them; returns (seconds, rows deleted, peak Python
    memory in bytes while deleting)."""
    import tracemalloc

    from django.db import connection

    from resilience.models import CallLog
    from resilience.telemetry.retention import table_prune

    table = CallLog._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {table}")
        cursor.execute(
            f"INSERT INTO {table} (created_at, upstream, method, path, status, outcome, latency_ms, "
            "attempts, retries, cache_hit, breaker_state, request_id, error) "
            "SELECT %s - make_interval(secs => g), 'bench', 'GET', '/v1/items/' || g, 200, 'ok', 80.0, 1, "
            "'[]'::jsonb, false, 'closed', md5(g::text), '' FROM generate_series(1, %s) AS g",
            [now - timedelta(days=30), rows])
        cursor.execute(f"VACUUM ANALYZE {table}")
    tracemalloc.start()
    started = time.perf_counter()
    deleted = table_prune(CallLog, time_field="created_at", before=now - timedelta(days=7), batch_size=5000)
    took = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return took, deleted, peak


def _writer_cost(calls: int) -> float:
    """Seconds per call the writer spends folding calls into rollups and
    writing them (and the sampled rows), in flushes of 500 as in production."""
    from types import SimpleNamespace

    from resilience.models import CallLog, DayRollup, HourRollup, MinuteRollup
    from resilience.telemetry.calllog import CallLogWriter

    writer = CallLogWriter("bench-writer")
    writer.autostart = False
    rng = random.Random(3)
    start = time.time() - 3600
    batch = []
    for i in range(calls):
        roll = rng.random()
        outcome = "ok" if roll < 0.97 else "timeout"
        call = SimpleNamespace(upstream=f"writer-{i % 3}", method="GET", path=f"/v1/items/{i}",
                               status=200 if outcome == "ok" else None, outcome=outcome,
                               latency_ms=_latency(rng), attempts=1, retries=[], cache_hit=False,
                               breaker_state="closed", request_id="", error="", created=start + i * 0.036,
                               sample_rate=0.01)
        call.as_row = lambda c=call: {"created_at": datetime.fromtimestamp(c.created, UTC),
                                      **{k: getattr(c, k) for k in ("upstream", "method", "path", "status",
                                         "outcome", "latency_ms", "attempts", "retries", "cache_hit",
                                         "breaker_state", "request_id", "error")}}
        batch.append(call)
    started = time.perf_counter()
    for first in range(0, calls, 500):
        for call in batch[first:first + 500]:
            writer.record(call)
        writer.flush()
    took = time.perf_counter() - started
    for model in (MinuteRollup, HourRollup, DayRollup, CallLog):
        model.objects.filter(upstream__startswith="writer-").delete()
    return took / calls


def _mb(value: float) -> str:
    return f"{value / 1e6:.1f} MB"


def main() -> None:
    url = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/rsl_bench_stats")
    if not url.startswith(("postgres://", "postgresql://")):
        print("bench_stats needs PostgreSQL: set BENCH_DATABASE_URL=postgres://...")
        return
    try:
        _ensure_database(url)
    except Exception as err:  # no server: say so instead of failing the whole `make bench`
        print(f"bench_stats skipped: PostgreSQL at {url} is not reachable ({err})")
        return
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("CALL_LOG_FLUSH_INTERVAL", "0")
    from bench.common import django_setup

    django_setup()
    from django.db import connection

    from resilience.models import Upstream

    Upstream.objects.update_or_create(name="bench", defaults={"base_url": "http://127.0.0.1:9"})
    now = datetime.now(UTC).replace(second=30, microsecond=0)
    levels = [float(v) for v in os.environ.get("BENCH_STATS_LEVELS", "1e5,1e6,1e7").split(",")]
    _reader_tables(levels, now, pg_version=connection.pg_version)
    size, rate = _call_log_bytes_per_million(now)
    table("Call-log rows per 1 M successful calls (default sample rate)",
          ("sample rate", "rows kept", "table + indexes", "target <= 10 MB"),
          [(f"{rate:g}", f"{round(1_000_000 * rate):,}", _mb(size), verdict(size <= 10e6))])
    per_call = _writer_cost(100_000)
    table("Writer cost (off the hot path: the writer thread folds, upserts and inserts)",
          ("calls", "per call", "at 10 M calls/day"),
          [("100,000 in flushes of 500", fmt_time(per_call), f"{per_call * 1e7 / 86400:.2%} of one core")])
    prune_rows = int(float(os.environ.get("BENCH_PRUNE_ROWS", "1e6")))
    if prune_rows:
        took, deleted, peak = _prune(prune_rows, now)
        table("Pruning old call-log rows in batches of 5,000",
              ("rows deleted", "time", "rows/s", "peak Python memory while deleting"),
              [(f"{deleted:,}", f"{took:.1f} s", f"{deleted / took:,.0f}", f"{peak / 1e3:.0f} kB")])

def _reader_tables(levels: list[float], now: datetime, *, pg_version: int) -> None:
    """The statistics readers at each traffic level, and the rollups' storage there."""
    results: dict[float, dict[str, float]] = {}
    storage = []
    for level in levels:
        started = time.perf_counter()
        filled = _fill(level, now)
        results[level] = {name: _time(fn) for name, fn in _readers(now).items()}
        total = filled["minute_bytes"] + filled["hour_bytes"] + filled["day_bytes"]
        storage.append((f"{level:,.0f}", f"{filled['minute_rows']:,}", _mb(filled["minute_bytes"]),
                        f"{filled['hour_rows']:,}", _mb(filled["hour_bytes"]),
                        f"{filled['day_rows']:,}", _mb(filled["day_bytes"]), _mb(total / (NEIGHBOURS + 1))))
        took = time.perf_counter() - started
        print(f"  filled and timed {level:,.0f} calls/day in {took:.0f} s", flush=True)

    header = ("reader", *[f"{level:,.0f} calls/day" for level in levels],
              f"ratio {levels[-1]:.0e} / {levels[0]:.0e}", "target <= 20 ms")
    rows = []
    for name in results[levels[0]]:
        times = [results[level][name] for level in levels]
        rows.append((name, *[fmt_time(t) for t in times], f"{times[-1] / times[0]:.2f}",
                     verdict(times[-1] <= TARGET)))
    table(f"Statistics read from rollups on PostgreSQL {pg_version // 10000} (median of 25 warm "
          f"reads; {NEIGHBOURS} neighbour upstreams of the same traffic share the tables)", header, rows)
    table("Rollup storage at the default retention (all 10 upstreams)",
          ("calls/day per upstream", "minute rows", "minute table", "hour rows", "hour table", "day rows",
           "day table", "per upstream"), storage)


if __name__ == "__main__":
    main()
