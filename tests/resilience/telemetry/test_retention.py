"""Retention: rows, minute and hour rollups pruned by age in bounded batches,
by `prune_telemetry` and its old name `prune_call_logs`."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext

from resilience.models import CallLog, DayRollup, HourRollup, MinuteRollup
from resilience.telemetry.calllog import call_log_flush, call_log_record
from resilience.telemetry.retention import table_prune, telemetry_prune
from tests.resilience.telemetry.conftest import Call

pytestmark = pytest.mark.django_db
DAY = 86400


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def fill(now: float) -> None:
    for age_days in (0.5, 2.5, 5, 10, 100):
        call_log_record(Call(created=now - age_days * DAY, outcome="timeout", status=None))
    call_log_flush()


def test_each_kind_is_pruned_by_its_own_retention(settings):
    settings.RESILIENCE = {**settings.RESILIENCE, "CALL_LOG_RETENTION_DAYS": 7,
                           "ROLLUP_MINUTE_RETENTION_DAYS": 3, "ROLLUP_HOUR_RETENTION_DAYS": 90,
                           "ROLLUP_DAY_RETENTION_DAYS": 7}
    now = datetime.now(UTC)
    fill(now.timestamp())
    assert telemetry_prune(now=now) == {"rows": 2, "minutes": 3, "hours": 1, "days": 2, "generations": 0,
                                        "usage": 0}
    assert CallLog.objects.count() == 3
    assert MinuteRollup.objects.count() == 2
    assert HourRollup.objects.count() == 4
    assert DayRollup.objects.count() == 3


def test_batches_are_bounded_and_progress_is_reported():
    now = datetime.now(UTC)
    for minute in range(23):
        call_log_record(Call(created=now.timestamp() - 10 * DAY - 60 * minute))
    call_log_flush()
    seen: list[int] = []
    with CaptureQueriesContext(connection) as captured:
        deleted = table_prune(MinuteRollup, time_field="start", before=now - timedelta(days=1),
                              batch_size=5, progress=seen.append)
    assert deleted == 23 and seen == [5, 10, 15, 20, 23]
    deletes = [q["sql"] for q in captured.captured_queries if q["sql"].startswith("DELETE")]
    assert len(deletes) == 5 and all("LIMIT 5" in sql for sql in deletes)
    with pytest.raises(ValueError):
        table_prune(MinuteRollup, time_field="start", before=now, batch_size=0)


def test_prune_commands_new_and_old_name():
    fill(datetime.now(UTC).timestamp())
    out = run("prune_telemetry", "--older-than", "7d", "--minutes-older-than", "1d", "--hours-older-than",
              "30d", "--days-older-than", "6d", "--batch-size", "2")
    assert "deleted 2 call log(s) older than 7 days" in out
    assert "deleted 4 minute rollup(s) older than 1 day" in out
    assert "deleted 1 hour rollup(s) older than 30 days" in out
    assert "deleted 2 day rollup(s) older than 6 days" in out
    assert "deleted 2 call log(s) older than 2 days" in run("prune_call_logs", "--older-than", "48h")
    with pytest.raises(CommandError, match="invalid age"):
        run("prune_call_logs", "--older-than", "a week")
    with pytest.raises(CommandError, match="batch-size"):
        run("prune_telemetry", "--batch-size", "0")


def test_generation_records_have_retention(settings):
    from aigen.generation.records import generation_record, generation_records_flush, generation_row
    from aigen.models import Generation

    settings.AIGEN = {**settings.AIGEN, "GENERATION_RETENTION_DAYS": 30}
    now = datetime.now(UTC)
    for age_days in (1, 29, 31, 400):
        generation_record(generation_row(created_at=now - timedelta(days=age_days),
                                         template_id="emergency_plan", section_id="1", provider="mock",
                                         model="mock-1"))
    generation_records_flush()
    assert telemetry_prune(now=now)["generations"] == 2
    assert Generation.objects.count() == 2
    out = run("prune_telemetry", "--generations-older-than", "2d")
    assert "deleted 1 generation record(s) older than 2 days" in out
    assert Generation.objects.count() == 1
