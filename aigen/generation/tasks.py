"""Queued generations: the `aigen.generate` job and the services behind
`/api/ai/jobs` and `cache_warmup --enqueue`.

`generation_job_submit(body=..., user=...)` validates the generate body (the
same as `POST /api/ai/generate`, plus `priority`) and queues a job;
`generation_job_get(job_id=..., user=...)` reads one back for its owner (or
staff). A provider failure (5xx kinds) is retried with backoff; bad input
and unknown templates (4xx) fail at once; the job's `error` is the API's error
object and its `result` the exact body generate answers.
"""
from __future__ import annotations

import uuid
from typing import Any

from django.contrib.auth import get_user_model

from aigen.exceptions import GenerationError, InvalidInput
from aigen.generation.request import GenerationRequest
from aigen.generation.services import text_generate
from resilience.client.context import caller_bound, priority_bound
from resilience.exceptions import AppError
from resilience.jobs import job, job_enqueue
from resilience.jobs.models import Job

GENERATE_JOB = "aigen.generate"


class JobNotFound(AppError):
    code = "job_not_found"
    status = 404


class PriorityForbidden(AppError):
    code = "priority_forbidden"
    status = 403


@job(name=GENERATE_JOB, attempts=3, backoff=2.0, backoff_max=60.0, jitter=1.0, timeout=300)
def generation_job(*, template_id: str, section_id: str, data: Any, use_cache: bool = True,
                   user_id: int | None = None) -> dict[str, Any]:
    """Generate one section; returns generate's response body."""
    user = get_user_model().objects.filter(pk=user_id).first() if user_id else None
    # Its upstream calls are the owner's (call logs), at the `low` admission priority: queued
    # jobs and warmups are drained at the rate limited endpoints have left after interactive calls.
    with caller_bound(user_id), priority_bound("low"):
        result = text_generate(template_id=template_id, section_id=section_id, data=data,
                               use_cache=use_cache, user=user)
    return {"success": True, **result.as_dict()}


def generation_job_args(body: Any) -> tuple[dict[str, Any], str]:
    """(job args, priority) from a jobs request body; raises `InvalidInput`
    naming the field, or a 404 kind for an unknown template or section.

    The data is checked against its section now, as `POST /api/ai/generate`
    checks it: a body the template cannot use is a 400 here, not a job that
    dead-letters later."""
    request = GenerationRequest.from_body(body)
    if request.stream:
        raise InvalidInput("stream", "Jobs do not stream; poll the status URL instead.")
    priority = body.get("priority", Job.Priority.NORMAL)
    if priority not in Job.Priority.values:
        raise InvalidInput("priority", f"One of {', '.join(Job.Priority.values)}.")
    request.section_check()
    return request.job_args(), priority


def generation_job_submit(*, body: Any, user: Any, group: str = "") -> Job:
    """Queue a generation for `user`; staff only may ask for high priority."""
    args, priority = generation_job_args(body)
    if priority == Job.Priority.HIGH and not getattr(user, "is_staff", False):
        raise PriorityForbidden("Only staff may queue high-priority jobs.", field="priority")
    return job_enqueue(GENERATE_JOB, args={**args, "user_id": getattr(user, "pk", None)},
                       priority=priority, owner=user, group=group)


def generation_job_get(*, job_id: str, user: Any) -> Job:
    """The job, if `user` owns it or is staff; `JobNotFound` otherwise (a
    foreign job is as unknown as a missing one)."""
    try:
        pk = uuid.UUID(str(job_id))
    except ValueError:
        raise JobNotFound("No such job.", job_id=str(job_id)) from None
    rows = Job.objects.filter(pk=pk, name=GENERATE_JOB)
    if not getattr(user, "is_staff", False):
        rows = rows.filter(owner_id=getattr(user, "pk", None))
    row = rows.first()
    if row is None:
        raise JobNotFound("No such job.", job_id=str(pk))
    return row


def generation_job_view(row: Job) -> dict[str, Any]:
    """A job as the API shows it: `result` is generate's body when done,
    `error` the shared error object when failed (or the last failed attempt's
    while a retry waits)."""
    error = dict(row.error) if row.error else None
    if error is not None:
        error.pop("status", None)
    return {
        "id": str(row.pk), "status": row.status, "priority": row.priority,
        "attempts": row.attempts, "max_attempts": row.max_attempts,
        "created_at": row.created_at.isoformat(),
        "started_at": row.started_at.isoformat() if row.started_at else None,
        "finished_at": row.finished_at.isoformat() if row.finished_at else None,
        "result": row.result if row.status == Job.Status.DONE else None,
        "error": error if row.status != Job.Status.DONE else None,
        "error_status": (row.error or {}).get("status") if row.status == Job.Status.FAILED else None,
    }


__all__ = ["GENERATE_JOB", "GenerationError", "JobNotFound", "PriorityForbidden", "generation_job",
           "generation_job_get", "generation_job_submit", "generation_job_view"]
