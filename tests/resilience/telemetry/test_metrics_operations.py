"""/metrics for operations: queues (depth, oldest age, running), dead
letters, probes' last result per upstream, alerts firing per rule, lock
counters; labels only from configuration."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from resilience.alerts.models import Alert, AlertRule
from resilience.cache import default_cache
from resilience.jobs.models import Job, ProbeResult
from resilience.jobs.worker import LAST_TICK_KEY
from resilience.locks import Lock
from tests.resilience.telemetry.test_metrics import scrape, scraper_address, value  # noqa: F401  (the scraper may read /metrics)

pytestmark = pytest.mark.django_db


def test_queue_depth_oldest_age_running_and_dead_letters():
    now = timezone.now()
    for minutes, priority in ((10, "high"), (2, "high"), (1, "low")):
        job = Job.objects.create(name="resilience.reap", priority=priority)
        Job.objects.filter(pk=job.pk).update(created_at=now - timedelta(minutes=minutes))
    Job.objects.create(name="resilience.reap", priority="low", run_after=now + timedelta(hours=1))  # not due
    Job.objects.create(name="resilience.reap", priority="normal", status=Job.Status.RUNNING)
    Job.objects.create(name="resilience.reap", status=Job.Status.FAILED, finished_at=now)
    samples = scrape()
    assert value(samples, "resilience_jobs_queue_depth", queue="high") == 2
    assert value(samples, "resilience_jobs_queue_depth", queue="low") == 1
    assert value(samples, "resilience_jobs_queue_depth", -1, queue="default") == 0
    assert 600 <= value(samples, "resilience_jobs_queue_oldest_age_seconds", queue="high") < 700
    assert value(samples, "resilience_jobs_running", queue="default") == 1
    assert value(samples, "resilience_jobs_dead_letters") == 1
    assert "resilience_jobs_scheduler_last_tick_timestamp_seconds" not in samples  # no worker ticked
    default_cache().set(LAST_TICK_KEY, 1_800_000_000.0)
    assert value(scrape(), "resilience_jobs_scheduler_last_tick_timestamp_seconds") == 1_800_000_000.0


def test_probes_last_result_and_failure_streak_per_upstream(policy):
    policy("probed", health_path="/health", probe_interval=30)
    policy("unprobed")
    for ok in (True, False, False):
        ProbeResult.objects.create(upstream="probed", ok=ok)
    samples = scrape()
    assert value(samples, "resilience_probe_ok", -1, upstream="probed") == 0
    assert value(samples, "resilience_probe_consecutive_failures", upstream="probed") == 2
    assert value(samples, "resilience_probe_timestamp_seconds", upstream="probed") > 0
    assert value(samples, "resilience_probe_ok", -1, upstream="unprobed") == -1  # not probed: no series


def test_alerts_firing_per_rule_by_id_metric_and_severity():
    rule = AlertRule.objects.create(name="queue-deep", metric="queue_depth", scope="any", op=">",
                                    threshold=100, severity="critical")
    Alert.objects.create(rule=rule, subject="high", state="firing")
    Alert.objects.create(rule=rule, subject="low", state="firing")
    Alert.objects.create(rule=rule, subject="default", state="pending")
    samples = scrape()
    assert value(samples, "resilience_alerts_firing", rule_id=str(rule.pk), metric="queue_depth",
                 severity="critical") == 2


def test_lock_counters_never_label_the_lock_name(settings):
    settings.REDIS_URL = ""
    before = scrape()
    held = Lock("user:zqxjv-lock", blocking_timeout=0, extend=False, backend="local")
    assert held.acquire()
    assert not Lock("user:zqxjv-lock", blocking_timeout=0, extend=False, backend="local").acquire()
    held.release()
    after = scrape()
    for event, more in (("acquired", 1), ("contended", 1), ("not_acquired", 1)):
        assert value(after, "resilience_lock_events_total", event=event) - value(
            before, "resilience_lock_events_total", event=event) == more
    assert "zqxjv" not in str(after)
