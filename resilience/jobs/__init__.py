"""The jobs ENGINE: background work on a real queue engine, with retries,
dead letters, schedules and locks. It knows no application task: each task is
defined, and declares its schedule (`schedules.schedule_declare` /
`schedule_source_declare`), in its own room (resilience.ops.tasks,
resilience.advisor.tasks, resilience.alerts.tasks, aigen's tasks); the
engine's own are pruning and the reaper (`tasks`).

Who may import it: the advice-and-work floor (advisor, alerts) and everything
above. It imports the calls floor (telemetry retention) and storage only.

Who may call what:
- `job(...)` declares a job function (its attempts, backoff and timeout);
- `job_enqueue(name, args=..., priority=..., delay=...)` queues one and
  returns its ledger row (`resilience.jobs.models.Job`);
- `job_requeue(job)` sends a dead letter round again;
- `schedules_tick(now=...)` (which reads the declared schedules) and
  `jobs_reap(now=...)` are run by the
  `jobs_worker` command (and are safe to run from many processes at once).

The engine is Django's tasks API (django-tasks on Django 5.2): the database
backend (django-tasks-db) by default, RQ (django-tasks-rq) with
`JOBS_BACKEND=rq`. The engine moves and runs one engine task, `run_job`; the
ledger row says what the job is, which attempt it is on and how it ended, the
same on every backend. See `runner` for what happens on failure.
"""
from resilience.jobs.registry import JobSpec, job
from resilience.jobs.runner import job_enqueue, job_requeue, jobs_reap

__all__ = ["JobSpec", "job", "job_enqueue", "job_requeue", "jobs_reap"]
