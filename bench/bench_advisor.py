"""Advisor benchmark: every finding for 50 upstreams over 7 days of rollups.

Fills the rollup tables for `UPSTREAMS` upstreams at `CALLS_PER_DAY` calls a
day each: minute rows for the last day (the advisor reads 15 minutes of them;
a day keeps the index realistic), hour rows for 8 days and day rows for 8
days, each with a latency histogram of that bucket's real number of calls and
the advisor's signals. Then times, in alternating rounds of the same run:

- `findings_compute()` for all 50 (what `GET /api/resilience/findings`,
  `manage.py advise` and the dashboard panel compute), against
- the baseline: `upstream_stats(window=24h)` for each of the 50 (the
  existing per-upstream statistics reader, one query per upstream).

Prints the absolute milliseconds of both and the ratio. Target: findings for
50 upstreams in under 200 ms.

Database: `BENCH_DATABASE_URL` (default
postgres://postgres@127.0.0.1:5432/rsl_bench_advisor, created if missing);
falls back to a scratch SQLite file when PostgreSQL is not reachable.
"""
from __future__ import annotations

import math
import os
import random
import time
from datetime import UTC, datetime

from bench.common import fmt_time, paired_ratio, table, verdict

UPSTREAMS = 50
CALLS_PER_DAY = 1_000_000
TARGET = 0.200


def _latency(rng: random.Random) -> float:
    roll = rng.random()
    if roll < 0.9:
        return rng.lognormvariate(math.log(80), 0.5)
    if roll < 0.99:
        return rng.lognormvariate(math.log(600), 0.7)
    return rng.uniform(4900, 5100)


def _delta(calls: int, rng: random.Random, samples: int = 400, slower: float = 1.0):
    """A bucket of `calls` calls: its histogram from `samples` drawn latencies,
    scaled (the shape of a busy bucket without drawing a million values)."""
    from resilience.telemetry import histogram
    from resilience.telemetry.rollups import RollupDelta

    delta = RollupDelta()
    scale = max(1, calls // samples)
    for _ in range(min(calls, samples)):
        histogram.add(delta.latency, _latency(rng) * slower, scale)
    delta.reached = sum(delta.latency.values())
    delta.calls = delta.reached + calls // 50
    delta.cache_hits = calls // 50
    failed = delta.reached // 100
    delta.errors = failed
    delta.retries = failed
    delta.outcomes = {"ok": delta.reached - failed, "http_error": failed, "cache_hit": calls // 50}
    delta.signals = {"retried": failed, "retried_ok": failed // 3, "cacheable": delta.reached // 2,
                     "refetch": delta.reached // 10, "refetch_gap_s": delta.reached * 3,
                     "throttled": failed // 10}
    return delta


def _fill(now: datetime) -> dict[str, int]:
    from django.db import transaction

    from resilience.models import DayRollup, HourRollup, MinuteRollup, Upstream
    from resilience.telemetry.rollups import rollups_upsert

    for model in (MinuteRollup, HourRollup, DayRollup):
        model.objects.all().delete()
    Upstream.objects.all().delete()
    rng = random.Random(7)
    per_minute = CALLS_PER_DAY // 1440
    minutes = [_delta(per_minute, rng) for _ in range(30)]
    slow = [_delta(per_minute, rng, slower=4.0) for _ in range(5)]
    hours = [_delta(per_minute * 60, rng) for _ in range(12)]
    days = [_delta(CALLS_PER_DAY, rng) for _ in range(4)]
    end_minute = int(now.timestamp() // 60) * 60
    end_hour = int(now.timestamp() // 3600) * 3600
    end_day = int(now.timestamp() // 86400) * 86400
    for index in range(UPSTREAMS):
        name = f"up-{index:02d}"
        Upstream.objects.create(name=name, base_url="http://127.0.0.1:9", read_timeout=10.0)
        with transaction.atomic():
            # Every fifth upstream slowed down over the last 15 minutes (a latency regression).
            rollups_upsert(MinuteRollup, {(name, "", end_minute - 60 * i): (
                slow[i % len(slow)] if index % 5 == 0 and i < 16 else minutes[i % len(minutes)])
                for i in range(1440)})
            rollups_upsert(HourRollup, {(name, "", end_hour - 3600 * i): hours[i % len(hours)]
                                        for i in range(8 * 24)})
            rollups_upsert(DayRollup, {(name, "", end_day - 86400 * i): days[i % len(days)]
                                       for i in range(9)})
    return {"minute_rows": MinuteRollup.objects.count(), "hour_rows": HourRollup.objects.count(),
            "day_rows": DayRollup.objects.count()}


def _database() -> str:
    url = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/rsl_bench_advisor")
    if url.startswith(("postgres://", "postgresql://")):
        try:
            from bench.bench_stats import _ensure_database

            _ensure_database(url)
        except Exception as err:  # no server: SQLite still answers the question, say which
            print(f"PostgreSQL at {url} not reachable ({err}); using a scratch SQLite file")
            return ""
    return url


def main() -> None:
    url = _database()
    if url:
        os.environ["DATABASE_URL"] = url
    os.environ.setdefault("CALL_LOG_FLUSH_INTERVAL", "0")
    from bench.common import django_setup

    django_setup()
    from django.db import connection

    from resilience.advisor.services import findings_compute
    from resilience.telemetry.selectors import WINDOWS, upstream_stats

    now = datetime.now(UTC).replace(second=30, microsecond=0)
    started = time.perf_counter()
    rows = _fill(now)
    print(f"  {connection.vendor}: filled {rows} for {UPSTREAMS} upstreams in "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    names = [f"up-{i:02d}" for i in range(UPSTREAMS)]
    found = findings_compute(now=now)

    def advisor() -> None:
        findings_compute(now=now)

    def baseline() -> None:
        for name in names:
            upstream_stats(name=name, window=WINDOWS["24h"], now=now)

    ratio, mine, theirs = paired_ratio(advisor, baseline, n=1, rounds=11, warmup=2)
    table(f"Advisor: findings for {UPSTREAMS} upstreams over 7 days of rollups ({connection.vendor})",
          ("reader", "time (median)", "ratio to baseline", f"target < {TARGET * 1000:.0f} ms"),
          [("findings_compute(), all upstreams", fmt_time(mine), f"{ratio:.2f}", verdict(mine < TARGET)),
           (f"baseline: upstream_stats(24h) x {UPSTREAMS}", fmt_time(theirs), "1.00", "")])
    kinds: dict[str, int] = {}
    for finding in found:
        kinds[finding.kind] = kinds.get(finding.kind, 0) + 1
    print(f"\n{len(found)} findings on the synthetic data: {kinds}")


if __name__ == "__main__":
    main()
