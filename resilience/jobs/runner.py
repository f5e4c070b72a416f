"""Enqueueing and running jobs, retries, dead letters and lost attempts.

What happens on failure:
- an attempt that raises is recorded on the ledger row (`error`, `traceback`);
  if `retry_if` allows it and attempts remain, the job is queued again to run
  after `JobSpec.delay(attempt)` (exponential backoff plus jitter, through the
  engine's `run_after`), else it becomes a dead letter (`failed`);
- a worker killed mid-attempt (SIGKILL, OOM, lost host) leaves the row
  `running` with a lease; `jobs_reap` (scheduled every minute) treats an
  expired lease as a failed attempt ("worker_lost") with the same retry rule,
  so a job is re-run or visibly failed, never silently lost. Delivery is at
  least once: an attempt that only looked lost and finishes late finds its
  attempt number moved on and its result is dropped;
- a duplicate or stale engine message (the attempt number no longer matches)
  is skipped without running.
"""
from __future__ import annotations

import logging
import traceback as tb
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone
from django_tasks import task, task_backends

from resilience.conf import resilience_settings
from resilience.exceptions import AppError
from resilience.jobs.models import Job
from resilience.jobs.registry import job_spec

logger = logging.getLogger(__name__)

QUEUES = {Job.Priority.HIGH: "high", Job.Priority.NORMAL: "default", Job.Priority.LOW: "low"}
# The database backend also orders by number, so one worker on every queue
# takes high first; RQ has no numbers: its worker reads queues in order.
ENGINE_PRIORITY = {Job.Priority.HIGH: 50, Job.Priority.NORMAL: 0, Job.Priority.LOW: -50}


class WorkerLost(Exception):
    """An attempt's lease ran out without an outcome: its worker died."""


clock = timezone.now  # seam: tests move the clock


def _now() -> datetime:
    return clock()


def error_dict(err: BaseException) -> dict[str, Any]:
    """The shared error shape for a failure ({code, message, ...} + status)."""
    if isinstance(err, AppError):
        return {**err.as_dict(), "status": err.status}
    if isinstance(err, WorkerLost):
        return {"code": "worker_lost", "message": str(err), "status": 500}
    return {"code": "job_error", "message": f"{type(err).__name__}: {err}", "status": 500}


def job_enqueue(name: str, *, args: dict[str, Any] | None = None, priority: str = Job.Priority.NORMAL,
                delay: float | None = None, owner: Any = None, group: str = "",
                unique_key: str | None = None) -> Job:
    """Queue job `name` (a registered job function's dotted path) with `args`.

    `delay` seconds from now (the engine's `run_after`); `unique_key` makes a
    second enqueue with the same key a no-op that raises IntegrityError (the
    schedules use it). A worker never looks for a row it cannot see yet: on
    the database engine the ledger row and the engine's message are written
    in one transaction (one commit, and never one without the other); on RQ
    the message is sent when the surrounding transaction commits.
    """
    spec = job_spec(name)
    run_after = _now() + timedelta(seconds=delay) if delay else None
    with transaction.atomic():
        row = Job.objects.create(name=spec.name, args=args or {}, priority=priority,
                                 max_attempts=spec.attempts, run_after=run_after,
                                 owner=owner if getattr(owner, "pk", None) else None, group=group,
                                 unique_key=unique_key)
        if _engine_in_database():
            _dispatch(row, attempt=1, run_after=run_after)
        else:
            transaction.on_commit(lambda: _dispatch(row, attempt=1, run_after=run_after))
    return row


def _engine_in_database() -> bool:
    """Whether the engine keeps its messages in this database (django-tasks-db)."""
    from django_tasks_db import DatabaseBackend

    return isinstance(task_backends["default"], DatabaseBackend)


def job_requeue(row: Job) -> bool:
    """Send a dead letter round again with a fresh set of attempts; False when
    it is not a dead letter (any more)."""
    updated = Job.objects.filter(pk=row.pk, status=Job.Status.FAILED).update(
        status=Job.Status.QUEUED, attempts=0, run_after=None, finished_at=None, lease_until=None)
    if updated:
        row.refresh_from_db()
        transaction.on_commit(lambda: _dispatch(row, attempt=1, run_after=None))
    return bool(updated)


def _dispatch(row: Job, *, attempt: int, run_after: datetime | None) -> None:
    backend = task_backends["default"]
    priority = Job.Priority(row.priority)
    engine_task = run_job.using(queue_name=QUEUES[priority], run_after=run_after,
                                priority=ENGINE_PRIORITY[priority] if backend.supports_priority else None)
    result = engine_task.enqueue(str(row.pk), attempt)
    Job.objects.filter(pk=row.pk).update(engine_id=str(result.id))


@task()
def run_job(job_id: str, attempt: int) -> str:
    """The one engine task: run attempt `attempt` of ledger row `job_id`.

    Returns "done", "retry", "failed" or "skipped"; an attempt's exception is
    recorded on the row, and re-raised so the engine marks it failed too.
    """
    now = _now()
    try:
        row = Job.objects.get(pk=job_id)
        spec = job_spec(row.name)
    except (Job.DoesNotExist, KeyError):
        logger.warning("job %s: no such job or job function, skipped", job_id)
        return "skipped"
    lease_until = now + timedelta(seconds=spec.timeout)
    claimed = Job.objects.filter(pk=job_id, status=Job.Status.QUEUED, attempts=attempt - 1).update(
        status=Job.Status.RUNNING, attempts=attempt, started_at=now, lease_until=lease_until)
    if not claimed:
        return "skipped"  # a duplicate message, or the job was reaped/requeued meanwhile
    # The row as the claim left it (its name and args never change after enqueue).
    row.status, row.attempts, row.started_at, row.lease_until = Job.Status.RUNNING, attempt, now, lease_until
    try:
        value = spec.func(**row.args)
    except Exception as err:
        _attempt_failed(row, spec, attempt, err, "".join(tb.format_exception(err)))
        raise
    Job.objects.filter(pk=job_id, status=Job.Status.RUNNING, attempts=attempt).update(
        status=Job.Status.DONE, result=value, error=None, finished_at=_now(), lease_until=None)
    return "done"


def _attempt_failed(row: Job, spec: Any, attempt: int, err: BaseException, trace: str) -> str:
    """Record a failed attempt; queue the next one after a backoff, or make
    the job a dead letter. Only the attempt that holds the row may do this."""
    current = Job.objects.filter(pk=row.pk, status=Job.Status.RUNNING, attempts=attempt)
    fields = {"error": error_dict(err), "traceback": trace[-20000:], "lease_until": None}
    if attempt < row.max_attempts and spec.retry_if(err):
        run_after = _now() + timedelta(seconds=spec.delay(attempt))
        if current.update(status=Job.Status.QUEUED, run_after=run_after, **fields):
            row.refresh_from_db()
            transaction.on_commit(lambda: _dispatch(row, attempt=attempt + 1, run_after=run_after))
            logger.info("job %s %s: attempt %d failed (%s), retry at %s", row.name, row.pk, attempt,
                        fields["error"]["code"], run_after.isoformat())
        return "retry"
    if current.update(status=Job.Status.FAILED, finished_at=_now(), **fields):
        logger.warning("job %s %s: dead letter after %d attempt(s): %s", row.name, row.pk, attempt,
                       fields["error"]["message"])
    return "failed"


def jobs_reap(*, now: datetime | None = None) -> int:
    """Fail attempts whose lease ran out more than JOB_LEASE_GRACE seconds
    before `now` (their worker died), retrying or dead-lettering each like any
    failed attempt; returns how many. Safe from many processes at once."""
    now = now or _now()
    cutoff = now - timedelta(seconds=resilience_settings.JOB_LEASE_GRACE)
    reaped = 0
    for row in Job.objects.filter(status=Job.Status.RUNNING, lease_until__lt=cutoff):
        try:
            spec = job_spec(row.name)
        except KeyError:
            continue
        lost_engine_id = row.engine_id
        err = WorkerLost(f"attempt {row.attempts} started at {row.started_at:%Y-%m-%d %H:%M:%S} "
                         f"did not finish within its {spec.timeout:g} s lease")
        if _attempt_failed(row, spec, row.attempts, err, "") in ("retry", "failed"):
            reaped += 1
        _engine_mark_lost(lost_engine_id)
    return reaped


def _engine_mark_lost(engine_id: str) -> None:
    """The database engine keeps a dead worker's task `RUNNING` forever; say
    in its own table what happened (RQ moves abandoned jobs to its failed
    registry by itself)."""
    if not engine_id or not hasattr(task_backends["default"], "id_function"):
        return
    from django_tasks_db.models import DBTaskResult

    DBTaskResult.objects.filter(id=engine_id, status="RUNNING").update(
        status="FAILED", finished_at=_now(), exception_class_path=f"{__name__}.WorkerLost",
        traceback="The worker running this task was lost (see the job's error).")
