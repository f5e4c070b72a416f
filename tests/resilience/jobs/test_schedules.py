"""The schedules through a Redis outage: a real redis-server killed under
the tick. The tick takes the database's lock instead (one warning per
outage, one line when Redis is back), so probes, pruning and alert
evaluations keep being queued, one per interval."""
from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest

from resilience.cache import default_cache
from resilience.client.locks import lock_stats_store, redis_outage
from resilience.jobs import schedules as schedules_module
from resilience.jobs.models import Job
from resilience.jobs.schedules import schedules_tick
from resilience.jobs.worker import LAST_TICK_KEY, ScheduleTicker

pytestmark = pytest.mark.django_db
START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def killable_redis(redis_process, settings):
    settings.REDIS_URL = redis_process.url
    redis_outage.back()
    lock_stats_store.reset()
    yield redis_process
    redis_outage.back()


def reaps() -> list[str]:
    return sorted(Job.objects.filter(name="resilience.reap").values_list("unique_key", flat=True))


def test_the_schedule_runs_through_a_killed_redis_with_one_warning_per_outage(killable_redis, caplog):
    caplog.set_level(logging.INFO, logger="resilience.jobs")
    assert "reap:" + str(int(START.timestamp() // 60)) in "".join(schedules_tick(now=START))

    killable_redis.kill()
    for minute in range(1, 4):  # three intervals while Redis is down
        queued = schedules_tick(now=START + timedelta(minutes=minute))
        assert any(key.startswith("reap:") for key in queued)
    warnings = [r for r in caplog.records
                if r.levelno == logging.WARNING and "Redis unreachable" in r.message]
    assert len(warnings) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert lock_stats_store.snapshot()["fallbacks"] == 3

    killable_redis.start()  # same port: Redis is back
    schedules_tick(now=START + timedelta(minutes=4))
    assert [r.message for r in caplog.records].count("locks: Redis reachable again; locks are on Redis") == 1
    assert len(reaps()) == 5  # one per interval, none lost, none twice
    assert schedules_tick(now=START + timedelta(minutes=4)) == []  # the same interval again: nothing new


def test_a_ticker_says_once_that_ticks_fail_and_once_that_they_work_again(caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="resilience.jobs")
    ticker = ScheduleTicker(every=0.01)
    outcomes = iter([RuntimeError("database down")] * 3 + [None])

    def tick(**kwargs):
        outcome = next(outcomes)
        if outcome is not None:
            raise outcome
        return []

    monkeypatch.setattr("resilience.jobs.worker.schedules_tick", tick)
    for _ in range(4):
        ticker.tick()
    messages = [r.message for r in caplog.records]
    assert messages.count("schedule ticks failing; trying again every 0.01 s") == 1
    assert messages.count("schedule ticks work again") == 1
    assert isinstance(default_cache().get(LAST_TICK_KEY), float)  # what /metrics exports


def test_each_room_declares_its_own_schedules_and_the_ticker_reads_them(make_upstream):
    make_upstream("probed", health_path="/health", probe_interval=30)
    make_upstream("quiet", health_path="/health", probe_interval=0)
    found = {schedule.key: schedule for schedule in schedules_module.schedules()}
    # prune and reap: the engine's own (resilience.jobs.tasks); probes: resilience.ops.tasks;
    # advise: resilience.advisor.tasks; alerts: resilience.alerts.tasks.
    assert {key: (s.job, s.interval) for key, s in found.items()} == {
        "prune": ("resilience.prune", 3600), "reap": ("resilience.reap", 60),
        "probe:probed": ("resilience.probe", 30), "advise": ("resilience.advise", 300),
        "alerts": ("resilience.alerts_evaluate", 15), "alerts-prune": ("resilience.alerts_prune", 3600)}
    assert found["probe:probed"].args == {"name": "probed"}


def test_a_schedule_declared_next_to_its_task_is_queued_once_per_interval(monkeypatch):
    monkeypatch.setattr(schedules_module, "_sources", {})
    schedules_module.schedule_declare(key="declared", job="resilience.reap", interval=60, priority="low")
    assert schedules_tick(now=START, use_lock=False) == [f"declared:{int(START.timestamp() // 60)}"]
    assert schedules_tick(now=START + timedelta(seconds=30), use_lock=False) == []
    assert schedules_tick(now=START + timedelta(seconds=60), use_lock=False) == [
        f"declared:{int(START.timestamp() // 60) + 1}"]
    assert list(Job.objects.filter(name="resilience.reap").values_list("priority", flat=True)) == ["low"] * 2
