"""Jobs on RQ (django-tasks-rq) against the real test Redis, worked by an RQ
worker in this process: enqueue, queues for priorities, retry through RQ's
scheduled registry, dead letters."""
from __future__ import annotations

import time

import pytest
import redis

from resilience.jobs import job_enqueue
from resilience.jobs.models import Job
from resilience.jobs.worker import backend_kind, worker_run
from tests.support import jobs  # noqa: F401  (registers the test jobs)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def rq_backend(settings, redis_url):
    redis.Redis.from_url(redis_url).flushdb()
    queues = ["high", "default", "low"]
    settings.RQ_QUEUES = {name: {"URL": redis_url, "DEFAULT_TIMEOUT": 60} for name in queues}
    settings.TASKS = {"default": {"BACKEND": "django_tasks_rq.RQBackend", "QUEUES": queues}}
    assert backend_kind() == "rq"
    yield
    redis.Redis.from_url(redis_url).flushdb()


def drain_until(row: Job, *statuses: str) -> Job:
    for _ in range(60):  # bounded: a retry waits in RQ's scheduled registry (1 s resolution)
        worker_run(batch=True, scheduler=False)
        row.refresh_from_db()
        if row.status in statuses:
            return row
        time.sleep(0.05)
    return row


def test_rq_runs_a_job_and_maps_priority_to_queues(redis_url):
    import django_rq

    high = job_enqueue("tests.support.jobs.add", args={"a": 20, "b": 1}, priority="high")
    low = job_enqueue("tests.support.jobs.add", args={"a": 1, "b": 1}, priority="low")
    assert django_rq.get_queue("high").count == 1 and django_rq.get_queue("low").count == 1
    worker_run(batch=True, scheduler=False)
    high.refresh_from_db()
    low.refresh_from_db()
    assert (high.status, high.result, low.result) == ("done", 21, 2)
    assert high.started_at <= low.started_at  # the worker reads high before low


def test_rq_retries_with_backoff_then_dead_letters(tmp_path):
    row = job_enqueue("tests.support.jobs.flaky", args={"counter": str(tmp_path / "n"), "fail_times": 9})
    row = drain_until(row, "failed")
    assert (row.status, row.attempts) == ("failed", 3)
    assert "flaky failure 3" in row.error["message"] and "RuntimeError" in row.traceback


def test_rq_retry_then_success(tmp_path):
    row = job_enqueue("tests.support.jobs.flaky", args={"counter": str(tmp_path / "n"), "fail_times": 1})
    row = drain_until(row, "done", "failed")
    assert (row.status, row.attempts, row.result) == ("done", 2, "ok after 2")
