"""The call-log writer: every call counted in rollups, rows sampled (failures
kept), merging by upsert across writers, and nothing lost while the database
refuses writes."""
from __future__ import annotations

import logging
import random
from datetime import UTC, datetime

import pytest
from django.db import OperationalError, connection

from resilience.models import CallLog, HourRollup, MinuteRollup
from resilience.telemetry import calllog
from resilience.telemetry.calllog import CallLogWriter, call_log_flush, call_log_record
from tests.resilience.telemetry.conftest import NOW, Call

pytestmark = pytest.mark.django_db
MINUTE = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
HOUR = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def mixed_calls(upstream: str = "api") -> list[Call]:
    return [
        *[Call(upstream=upstream, latency_ms=float(ms)) for ms in range(1, 101)],  # 100 successes
        Call(upstream=upstream, outcome="ok", attempts=3, latency_ms=250.0),  # retried: kept
        Call(upstream=upstream, outcome="http_error", status=503, error="503"),
        Call(upstream=upstream, outcome="http_error", status=404, error="404"),
        Call(upstream=upstream, outcome="timeout", status=None, attempts=2, latency_ms=2000.0),
        Call(upstream=upstream, outcome="breaker_open", status=None, attempts=0, latency_ms=0.05),
        Call(upstream=upstream, outcome="stale", status=200, attempts=1, cache_hit=True, latency_ms=30.0),
        *[Call(upstream=upstream, outcome="cache_hit", attempts=0, cache_hit=True, latency_ms=0.1)
          for _ in range(10)],
        Call(upstream=upstream, outcome="shared", attempts=0, cache_hit=True, latency_ms=12.0),
        Call(upstream=upstream, outcome="refused", status=None, attempts=0, error="disabled"),
    ]


def test_rollups_count_every_call_and_rows_keep_every_failure(policy):
    policy(log_sample_rate=0.0)
    for call in mixed_calls():
        call_log_record(call)
    assert call_log_flush() == 118
    minute = MinuteRollup.objects.get(upstream="api", endpoint="", start=MINUTE)
    assert (minute.calls, minute.errors, minute.cache_hits, minute.stale, minute.breaker_rejections,
            minute.retries, minute.reached) == (118, 4, 12, 1, 1, 3, 105)
    assert minute.outcomes == {"ok": 101, "http_error": 2, "timeout": 1, "breaker_open": 1, "stale": 1,
                               "cache_hit": 10, "shared": 1, "refused": 1}
    assert sum(minute.latency.values()) == minute.reached
    hour = HourRollup.objects.get(upstream="api", start=HOUR)
    assert (hour.calls, hour.outcomes, hour.latency) == (minute.calls, minute.outcomes, minute.latency)
    # Rate 0: no plain success keeps a row; every failed, retried, stale or rejected call does.
    kept = sorted(CallLog.objects.values_list("outcome", "attempts"))
    assert kept == sorted([("ok", 3), ("http_error", 1), ("http_error", 1), ("timeout", 2),
                           ("breaker_open", 0), ("stale", 1), ("refused", 0)])
    assert calllog.call_log_writer().sampled_out >= 111


def test_successes_are_sampled_at_the_rate_a_call_carries(policy, monkeypatch):
    policy(log_sample_rate=1.0)  # the call's own rate wins (the client copies it from the policy)
    monkeypatch.setattr(CallLogWriter, "random", staticmethod(random.Random(7).random))
    for _ in range(1000):
        call_log_record(Call(sample_rate=0.1))
    call_log_flush()
    assert MinuteRollup.objects.get().calls == 1000
    assert 60 < CallLog.objects.count() < 140  # ~100: a sample, not every row


def test_the_policy_rate_applies_when_the_call_carries_none(policy):
    policy("quiet", log_sample_rate=0.0)
    policy("loud", log_sample_rate=1.0)
    for _ in range(5):
        call_log_record(Call(upstream="quiet"))
        call_log_record(Call(upstream="loud"))
        call_log_record(Call(upstream="nopolicy"))  # no policy row: nothing to sample by, all kept
    call_log_flush()
    assert dict(MinuteRollup.objects.values_list("upstream", "calls")) == {"quiet": 5, "loud": 5,
                                                                          "nopolicy": 5}
    assert sorted(set(CallLog.objects.values_list("upstream", flat=True))) == ["loud", "nopolicy"]
    assert CallLog.objects.count() == 10


def test_endpoint_is_part_of_the_rollup_key():
    call_log_record(Call(endpoint="primary"))
    call_log_record(Call(endpoint="primary"))
    call_log_record(Call(endpoint="backup", outcome="timeout", status=None))
    call_log_record(Call())
    call_log_flush()
    rows = dict(MinuteRollup.objects.values_list("endpoint", "calls"))
    assert rows == {"primary": 2, "backup": 1, "": 1}


def test_writers_of_several_workers_merge_into_the_same_rows():
    first, second = CallLogWriter("worker-1"), CallLogWriter("worker-2")
    first.autostart = second.autostart = False
    for ms in range(1, 51):
        first.record(Call(latency_ms=float(ms), sample_rate=0.0))
        second.record(Call(latency_ms=float(ms + 50), sample_rate=0.0))
    second.record(Call(outcome="timeout", status=None, latency_ms=3000.0, sample_rate=0.0))
    first.record(Call(created=NOW.timestamp() - 3600, sample_rate=0.0))  # the hour before
    assert first.flush() == 51
    assert second.flush() == 51
    first.record(Call(latency_ms=1.0, sample_rate=0.0))  # a later flush of the same minute
    first.flush()
    minute = MinuteRollup.objects.get(start=MINUTE)
    assert (minute.calls, minute.errors, minute.reached) == (102, 1, 102)
    assert minute.outcomes == {"ok": 101, "timeout": 1}
    assert sum(minute.latency.values()) == 102
    assert HourRollup.objects.get(start=HOUR).calls == 102
    assert sorted(HourRollup.objects.values_list("calls", flat=True)) == [1, 102]


class Refuse:
    """A database that refuses reads and writes (execute_wrapper), until lifted."""

    def __init__(self) -> None:
        self.on = True

    def __call__(self, execute, sql, params, many, context):
        if self.on and sql.lstrip().upper().startswith(("INSERT", "SELECT", "UPDATE")):
            raise OperationalError("the database is unreachable (test)")
        return execute(sql, params, many, context)


def test_a_refusing_database_loses_no_count_and_bounded_rows_are_counted(settings, caplog):
    settings.RESILIENCE = {**settings.RESILIENCE, "CALL_LOG_BUFFER_MAX": 3}  # keep at most 30 rows
    writer = calllog.call_log_writer()
    refuse = Refuse()
    caplog.set_level(logging.WARNING, logger="resilience.telemetry.calllog")
    with connection.execute_wrapper(refuse):
        # "60 s" of traffic while the database is down: a clock moved, not waited for.
        for second in range(60):
            at = MINUTE.timestamp() + second
            for _ in range(10):
                call_log_record(Call(created=at, latency_ms=5.0 + second, sample_rate=0.0))
            call_log_record(Call(created=at, outcome="timeout", status=None, sample_rate=0.0))
            assert call_log_flush() == 0
        refuse.on = False
        assert call_log_flush() == 660
    minute = MinuteRollup.objects.get(start=MINUTE)
    assert (minute.calls, minute.errors, minute.reached) == (660, 60, 660)
    assert sum(minute.latency.values()) == 660
    # 60 failure rows wanted to be kept, 30 fit: the oldest 30 were dropped, counted and logged.
    assert CallLog.objects.count() == 30
    assert writer.dropped == 30
    messages = [r.getMessage() for r in caplog.records]
    assert sum("database write failed" in m for m in messages) == 1  # once per outage, not per flush
    assert any("dropped the" in m and "oldest call-log rows" in m for m in messages)
    assert any("succeed again" in m for m in messages)
    writer.dropped = 0


def test_pending_minutes_are_bounded_and_the_loss_is_counted(settings, caplog):
    settings.RESILIENCE = {**settings.RESILIENCE, "ROLLUP_PENDING_MAX": 2}
    writer = calllog.call_log_writer()
    with connection.execute_wrapper(Refuse()):
        for minute in range(4):
            call_log_record(Call(created=MINUTE.timestamp() + 60 * minute, sample_rate=0.0))
            call_log_record(Call(created=MINUTE.timestamp() + 60 * minute, sample_rate=0.0))
            call_log_flush()
    assert writer.lost_calls == 4  # the two oldest minutes, two calls each
    assert "ROLLUP_PENDING_MAX=2" in caplog.text
    call_log_flush()
    assert sorted(MinuteRollup.objects.values_list("calls", flat=True)) == [2, 2]
    writer.lost_calls = 0
