"""Jobs on the real database engine (django-tasks-db), in this process:
enqueue, priorities, delays, retries with backoff, dead letters, requeue,
lost attempts, schedules."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from resilience.jobs import job_enqueue, job_requeue, jobs_reap, runner
from resilience.jobs.models import Job
from resilience.jobs.registry import JobSpec
from resilience.jobs.worker import worker_run
from tests.support import jobs  # noqa: F401  (registers the test jobs)

pytestmark = pytest.mark.django_db(transaction=True)


def drain(**kwargs) -> None:
    worker_run(batch=True, scheduler=False, interval=0.001, **kwargs)


def test_a_job_runs_and_keeps_its_result():
    row = job_enqueue("tests.support.jobs.add", args={"a": 2, "b": 3})
    assert row.status == Job.Status.QUEUED
    drain()
    row.refresh_from_db()
    assert (row.status, row.result, row.attempts) == (Job.Status.DONE, 5, 1)
    engine = DBTaskResult.objects.get(id=row.engine_id)
    assert engine.status == "SUCCESSFUL"


def test_priorities_map_to_queues_and_high_runs_first():
    low = job_enqueue("tests.support.jobs.add", args={"a": 1, "b": 0}, priority="low")
    normal = job_enqueue("tests.support.jobs.add", args={"a": 2, "b": 0})
    high = job_enqueue("tests.support.jobs.add", args={"a": 3, "b": 0}, priority="high")
    engine = {r.queue_name: r.priority for r in DBTaskResult.objects.all()}
    assert engine == {"low": -50, "default": 0, "high": 50}
    drain()
    order = sorted((low, normal, high), key=lambda r: Job.objects.get(pk=r.pk).started_at)
    assert [r.priority for r in order] == ["high", "normal", "low"]


def test_a_delayed_job_waits_for_run_after():
    row = job_enqueue("tests.support.jobs.add", args={"a": 1, "b": 1}, delay=3600)
    drain()
    row.refresh_from_db()
    assert row.status == Job.Status.QUEUED and row.attempts == 0
    assert DBTaskResult.objects.get(id=row.engine_id).run_after > timezone.now() + timedelta(minutes=59)


def test_a_failing_job_is_retried_with_backoff_then_succeeds(tmp_path, monkeypatch):
    counter = tmp_path / "runs"
    row = job_enqueue("tests.support.jobs.flaky", args={"counter": str(counter), "fail_times": 2})
    for _ in range(5):
        drain()
        row.refresh_from_db()
        if row.status == Job.Status.DONE:
            break
    assert (row.status, row.attempts, row.result) == (Job.Status.DONE, 3, "ok after 3")
    failed_attempts = DBTaskResult.objects.filter(status="FAILED").count()
    assert failed_attempts == 2  # each failed attempt is visible in the engine too


def test_backoff_is_exponential_with_jitter_and_capped(monkeypatch):
    spec = JobSpec(name="x", func=print, backoff=2, backoff_max=10, jitter=1)
    monkeypatch.setattr(JobSpec, "rng", staticmethod(lambda: 0.5))
    assert [spec.delay(n) for n in (1, 2, 3, 4)] == [2.5, 4.5, 8.5, 10.5]


def test_retry_is_queued_with_run_after(tmp_path):
    row = job_enqueue("tests.support.jobs.flaky", args={"counter": str(tmp_path / "n"), "fail_times": 9})
    drain(max_tasks=1)
    row.refresh_from_db()
    assert row.status == Job.Status.QUEUED and row.attempts == 1
    assert row.error["code"] == "job_error" and "flaky failure 1" in row.error["message"]
    assert "RuntimeError" in row.traceback
    nxt = DBTaskResult.objects.get(id=row.engine_id)
    assert nxt.args_kwargs["args"] == [str(row.pk), 2] and nxt.run_after >= row.started_at


def test_last_failure_makes_a_dead_letter_that_can_be_requeued(tmp_path):
    counter = tmp_path / "runs"
    row = job_enqueue("tests.support.jobs.flaky", args={"counter": str(counter), "fail_times": 3})
    for _ in range(5):
        drain()
    row.refresh_from_db()
    assert (row.status, row.attempts) == (Job.Status.FAILED, 3)
    assert "flaky failure 3" in row.error["message"] and "Traceback" in row.traceback
    from resilience.jobs.models import DeadLetter

    assert list(DeadLetter.objects.values_list("pk", flat=True)) == [row.pk]
    assert job_requeue(row) is True
    drain()
    row.refresh_from_db()
    assert (row.status, row.result) == (Job.Status.DONE, "ok after 4")
    assert job_requeue(row) is False  # only dead letters


def test_client_errors_are_not_retried():
    row = job_enqueue("tests.support.jobs.refuses")
    drain()
    row.refresh_from_db()
    assert (row.status, row.attempts) == (Job.Status.FAILED, 1)
    assert row.error == {"code": "refused", "message": "bad input never gets better", "status": 400}


def test_an_expired_lease_is_reaped_and_retried_with_a_moved_clock(tmp_path, monkeypatch):
    row = job_enqueue("tests.support.jobs.blocks", args={"started": str(tmp_path / "s"),
                                                         "release": str(tmp_path / "r")})
    # As if a worker had claimed attempt 1 and died: the row and the engine task stay running.
    now = timezone.now()
    Job.objects.filter(pk=row.pk).update(status=Job.Status.RUNNING, attempts=1, started_at=now,
                                         lease_until=now + timedelta(seconds=5))
    row.refresh_from_db()
    lost = row.engine_id
    DBTaskResult.objects.filter(id=lost).update(status="RUNNING")
    assert jobs_reap(now=now + timedelta(seconds=10)) == 0  # within lease + grace
    monkeypatch.setattr(runner, "clock", lambda: now + timedelta(seconds=60))
    assert jobs_reap() == 1
    row.refresh_from_db()
    assert row.status == Job.Status.QUEUED and row.error["code"] == "worker_lost"
    assert DBTaskResult.objects.get(id=lost).status == "FAILED"  # the engine says so too
    assert DBTaskResult.objects.get(id=row.engine_id).status == "READY"  # attempt 2
    # Back to real time: let the backoff (counted from the moved clock) be over.
    monkeypatch.setattr(runner, "clock", timezone.now)
    DBTaskResult.objects.filter(id=row.engine_id).update(run_after=timezone.now())
    (tmp_path / "r").write_text("go")
    drain()
    row.refresh_from_db()
    assert (row.status, row.attempts, row.result) == (Job.Status.DONE, 2, "released")


def test_a_stale_message_is_skipped():
    row = job_enqueue("tests.support.jobs.add", args={"a": 1, "b": 1})
    drain()
    assert runner.run_job.call(str(row.pk), 1) == "skipped"
    row.refresh_from_db()
    assert row.attempts == 1
