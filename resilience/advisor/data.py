"""What the rules read: every upstream's rollups for the windows they
compare, in five bulk queries whatever the number of upstreams (never the
call log).

Windows (all ending at `now`, rounded out to whole rollup buckets as in
resilience.telemetry.selectors):

- `recent`: the last `RECENT` (15 min), minute rows;
- `day`: the last 24 h, hour rows (the current hour included);
- `baseline_hours`: each whole hour of the 24 h before the hour in which
  `recent` starts, one latency histogram and failure count per hour;
- `baseline_days`: each whole UTC day of the 7 before today, day rows;
- breaker opens over the last hour and the last 24 h (breaker events).

Rows are grouped by subject: the upstream (endpoint "") or, with
`by_endpoint`, each (upstream, endpoint) the rollups know, so rules written
for one upstream work unchanged per endpoint.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from django.db.models import Count, Q

from resilience.models import BreakerEvent, DayRollup, HourRollup, MinuteRollup
from resilience.telemetry.rollups import COUNTERS, RollupDelta, totals

RECENT = timedelta(minutes=15)
DAY = timedelta(hours=24)
BASELINE_DAYS = 7
FIELDS = ("upstream", "endpoint", "start", *COUNTERS, "outcomes", "latency", "signals")

def _floor(moment: datetime, step: int) -> datetime:
    epoch = moment.timestamp()
    return datetime.fromtimestamp(epoch - epoch % step, UTC)


#: (upstream, endpoint): endpoint "" is the whole upstream.
Subject = tuple[str, str]


FAILED = ("http_error", "timeout", "connection_error")


@dataclass
class Bucket:
    """One baseline hour or day: calls that reached the upstream, how many of
    them failed (HTTP error, timeout, connection error), and the latency
    histogram as stored (JSON keys; merged only when endpoints share the bucket)."""

    start: datetime
    reached: int = 0
    failed: int = 0
    latency: dict = field(default_factory=dict)


@dataclass
class SubjectData:
    """One subject's figures for every window the rules compare."""

    upstream: str
    endpoint: str = ""
    recent: RollupDelta = field(default_factory=RollupDelta)
    day: RollupDelta = field(default_factory=RollupDelta)
    #: Each baseline hour / day, in time order.
    baseline_hours: list[Bucket] = field(default_factory=list)
    baseline_days: list[Bucket] = field(default_factory=list)
    opens_last_hour: int = 0
    opens_last_day: int = 0


@dataclass(frozen=True)
class Windows:
    now: datetime
    recent_since: datetime
    day_since: datetime
    baseline_hours_since: datetime
    baseline_hours_until: datetime
    baseline_days_since: datetime
    baseline_days_until: datetime

    @classmethod
    def ending(cls, now: datetime) -> Windows:
        recent_since = _floor(now - RECENT, 60)
        hours_until = _floor(recent_since, 3600)
        today = _floor(now, 86400)
        return cls(now=now, recent_since=recent_since, day_since=_floor(now - DAY, 3600),
                   baseline_hours_since=hours_until - DAY, baseline_hours_until=hours_until,
                   baseline_days_since=today - timedelta(days=BASELINE_DAYS), baseline_days_until=today)

    def describe(self) -> dict[str, dict[str, str]]:
        def span(since: datetime, until: datetime) -> dict[str, str]:
            return {"since": since.isoformat(), "until": until.isoformat()}
        return {"recent": span(self.recent_since, self.now), "day": span(self.day_since, self.now),
                "baseline_hours": span(self.baseline_hours_since, self.baseline_hours_until),
                "baseline_days": span(self.baseline_days_since, self.baseline_days_until)}


def _subject(row: dict, by_endpoint: bool) -> Subject:
    return row["upstream"], (row["endpoint"] if by_endpoint else "")


def _grouped(rows: Iterable[dict], by_endpoint: bool) -> dict[Subject, list[dict]]:
    groups: dict[Subject, list[dict]] = {}
    for row in rows:
        groups.setdefault(_subject(row, by_endpoint), []).append(row)
    return groups


def _per_bucket(rows: list[dict]) -> list[Bucket]:
    """Rows of one subject as one `Bucket` per start (endpoints merged), in
    time order. No histogram is decoded or re-keyed here: the rules take a
    percentile of the few buckets they need."""
    buckets: dict[datetime, Bucket] = {}
    for row in rows:
        bucket = buckets.get(row["start"])
        outcomes = row["outcomes"] or {}
        failed = sum(outcomes.get(name, 0) for name in FAILED)
        if bucket is None:
            buckets[row["start"]] = Bucket(row["start"], row["reached"], failed, row["latency"] or {})
            continue
        bucket.reached += row["reached"]
        bucket.failed += failed
        merged = dict(bucket.latency)
        for key, count in (row["latency"] or {}).items():
            merged[key] = merged.get(key, 0) + count
        bucket.latency = merged
    return [buckets[start] for start in sorted(buckets)]


def advisor_data(*, now: datetime, names: Iterable[str] | None = None,
                 by_endpoint: bool = False) -> tuple[Windows, dict[Subject, SubjectData]]:
    """Every subject's `SubjectData` (of upstreams `names`, or all), read in
    five queries: minute rows (recent), hour rows (day and baseline hours),
    day rows (baseline days), breaker opens."""
    windows = Windows.ending(now)

    def rows(model, since: datetime, until: datetime, *, inclusive: bool) -> list[dict]:
        query = model.objects.filter(start__gte=since)
        query = query.filter(start__lte=until) if inclusive else query.filter(start__lt=until)
        if names is not None:
            query = query.filter(upstream__in=list(names))
        return list(query.order_by().values(*FIELDS))

    minutes = _grouped(rows(MinuteRollup, windows.recent_since, now, inclusive=True), by_endpoint)
    hours = _grouped(rows(HourRollup, min(windows.baseline_hours_since, windows.day_since), now,
                          inclusive=True), by_endpoint)
    days = _grouped(rows(DayRollup, windows.baseline_days_since, windows.baseline_days_until,
                         inclusive=False), by_endpoint)
    # Trips only (closed -> open): failed probes opening it again belong to the same outage.
    events = BreakerEvent.objects.filter(from_state="closed", to_state="open", created_at__gte=now - DAY,
                                         created_at__lte=now)
    if names is not None:
        events = events.filter(upstream__in=list(names))
    opens = {row["upstream"]: row for row in events.order_by().values("upstream").annotate(
        day=Count("id"), hour=Count("id", filter=Q(created_at__gte=now - timedelta(hours=1))))}

    subjects: dict[Subject, SubjectData] = {}
    for key in {*minutes, *hours, *days}:
        data = subjects[key] = SubjectData(upstream=key[0], endpoint=key[1])
        data.recent = totals(minutes.get(key, ()))
        subject_hours = hours.get(key, [])
        data.day = totals(row for row in subject_hours if row["start"] >= windows.day_since)
        data.baseline_hours = _per_bucket([
            row for row in subject_hours
            if windows.baseline_hours_since <= row["start"] < windows.baseline_hours_until])
        data.baseline_days = _per_bucket(days.get(key, []))
    for name, row in opens.items():
        for key, data in subjects.items():
            if key[0] == name and key[1] == "":
                data.opens_last_hour, data.opens_last_day = row["hour"], row["day"]
        if (name, "") not in subjects:
            subjects[(name, "")] = SubjectData(upstream=name, opens_last_hour=row["hour"],
                                               opens_last_day=row["day"])
    return windows, subjects
