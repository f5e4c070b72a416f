"""Queued generations: the `aigen.generate` job and the services behind
`/api/ai/jobs` and `cache_warmup --enqueue`.

`generation_job_submit(body=..., user=...)` validates the generate body (the
same as `POST /api/ai/generate`, plus `priority`) and queues a job;
`generation_job_get(job_id=..., user=...)` reads one back for its owner (or
staff). A provider failure (5xx kinds) is retried with backoff; bad input
and unknown templates (4xx) fail at once; the job's `error` is the API's error
object and its `result` the exact body generate answers.

Caller limits (aigen.generation.quotas) hold for queued generations as for
`POST /api/ai/generate`: a caller that authenticated with an API token is
refused at the door (`QuotaExceeded`, the same 429) past its requests per
minute or its token budget; the submission counts one request in the
minute and holds nothing (a queued job may wait longer than a reservation
lives). When the job runs, the submitter's budget (its token's limits then)
is reserved for the generation and settled from the provider's usage; the
call is written to the usage ledger under the submitter, like any answered
call. A job whose caller's budget is spent by then fails at once with the
429's error object (`insufficient_quota`, not retried); one whose budget is
only held by the caller's calls in flight is retried later (`budget_held`,
503, the job's backoff and attempts). A job without a user
(`cache_warmup --enqueue`) is neither checked nor ledgered: the ledger is per
caller; its tokens are in the generation records and the call rollups.
"""
from __future__ import annotations

import uuid
from typing import Any

from django.contrib.auth import get_user_model

from aigen.conf import aigen_settings
from aigen.exceptions import GenerationError, InvalidInput, QuotaExceeded
from aigen.generation.quotas import CallerLimits, quota_check
from aigen.generation.request import GenerationRequest
from aigen.generation.services import GenerationResult, text_generate
from aigen.generation.spend import Spend, spend_open, tokens_estimate
from aigen.models import ApiToken
from resilience.client.context import caller_bound, priority_bound
from resilience.exceptions import AppError
from resilience.jobs import job, job_enqueue
from resilience.jobs.models import Job

GENERATE_JOB = "aigen.generate"
#: A budget refusal's wait when the budget is only held by calls in flight (aigen.generation.quotas).
HELD_WAIT = 1.0


class JobNotFound(AppError):
    code = "job_not_found"
    status = 404


class PriorityForbidden(AppError):
    code = "priority_forbidden"
    status = 403


class BudgetHeld(AppError):
    """The submitter's budget is held by its calls in flight when the job runs: retried later."""

    code = "budget_held"
    status = 503


def _job_spend(*, user_id: int | None, by_token: bool, data: Any) -> Spend:
    """The run's `Spend`: the submitter's token budget as it is now (its requests per
    minute were counted at the door), or only metering; `QuotaExceeded` when spent."""
    limits = None
    if by_token and user_id is not None:
        token = ApiToken.objects.filter(user_id=user_id).first()
        if token is not None and token.token_budget:
            limits = CallerLimits(budget=token.token_budget, period=token.budget_period)
    estimate = tokens_estimate(data) if limits is not None else 0
    try:
        return spend_open(user_id=user_id, limits=limits, model=aigen_settings.MODEL, estimate=estimate)
    except QuotaExceeded as refused:
        if refused.retry_after is not None and refused.retry_after <= HELD_WAIT:
            raise BudgetHeld("The API token's budget is held by its calls in flight; the job runs again "
                             "later.") from None
        raise


def _job_settle(spend: Spend, result: GenerationResult) -> None:
    """As generate settles: a fresh answer is billed its usage, a cached one frees the reservation."""
    if result.cached:
        spend.settle(None, billed=False)
        return
    spend.model = result.model
    spend.settle(result.usage.as_dict())


@job(name=GENERATE_JOB, attempts=3, backoff=2.0, backoff_max=60.0, jitter=1.0, timeout=300)
def generation_job(*, template_id: str, section_id: str, data: Any, use_cache: bool = True,
                   user_id: int | None = None, by_token: bool = False) -> dict[str, Any]:
    """Generate one section; returns generate's response body. Billed to
    `user_id` (its token's budget when submitted with one: `by_token`)."""
    user = get_user_model().objects.filter(pk=user_id).first() if user_id else None
    # QuotaExceeded: failed at once; BudgetHeld (calls in flight hold the budget): retried later.
    spend = _job_spend(user_id=user_id, by_token=by_token, data=data)
    try:
        # Its upstream calls are the owner's (call logs), at the `low` admission priority: queued
        # jobs and warmups are drained at the rate limited endpoints have left after interactive calls.
        with caller_bound(user_id), priority_bound("low"):
            result = text_generate(template_id=template_id, section_id=section_id, data=data,
                                   use_cache=use_cache, user=user)
    except BaseException:
        spend.settle(None, billed=False)  # no answer: the reservation is freed
        raise
    _job_settle(spend, result)
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


def generation_job_submit(*, body: Any, user: Any, group: str = "", token: ApiToken | None = None) -> Job:
    """Queue a generation for `user`; staff only may ask for high priority.
    `token`: the API token the request authenticated with (none for a
    session): past its limits `QuotaExceeded` (429), and the job is billed
    to its budget when it runs (see the module docstring)."""
    args, priority = generation_job_args(body)
    if priority == Job.Priority.HIGH and not getattr(user, "is_staff", False):
        raise PriorityForbidden("Only staff may queue high-priority jobs.", field="priority")
    user_id = getattr(user, "pk", None)
    limits = CallerLimits.of(token)
    if limits is not None and user_id is not None:
        quota_check(user_id=user_id, limits=limits)
    return job_enqueue(GENERATE_JOB, args={**args, "user_id": user_id, "by_token": token is not None},
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


__all__ = ["GENERATE_JOB", "BudgetHeld", "GenerationError", "JobNotFound", "PriorityForbidden",
           "generation_job", "generation_job_get", "generation_job_submit", "generation_job_view"]
