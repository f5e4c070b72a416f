"""Caller limits and the usage ledger for queued generations (issue 29, the jobs gap):

- `POST /api/ai/jobs` past the API token's requests per minute or token budget answers the 429
  `POST /api/ai/generate` answers (same body, Retry-After), and queues nothing;
- a job that runs is billed to its submitter's budget and written to the usage ledger (the rows
  `GET /api/ai/usage` shows), from the provider's usage;
- a job whose submitter's budget was spent while it waited fails at once with the 429's error
  object, without reaching the provider and without retries; one whose budget is only held by
  calls in flight is retried later (`budget_held`);
- `cache_warmup --enqueue` jobs (no caller) are neither checked nor ledgered.

The real database job engine runs the jobs (`worker_run`), against the fake OpenAI provider on
loopback; the caller limits on process memory and on the real Redis.
"""
from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command

from aigen.generation.ledger import usage_flush
from aigen.generation.quotas import CallerLimits, quota_admit, quota_settle
from aigen.management.commands import cache_warmup
from aigen.models import ApiToken, UsageLedger
from resilience.jobs.models import Job
from resilience.jobs.worker import worker_run

pytestmark = pytest.mark.django_db(transaction=True)

JOBS = "/api/ai/jobs"
GENERATE = "/api/ai/generate"


@pytest.fixture(params=["memory", "redis"])
def store(request):
    """The caller limits in process memory, then on the real Redis."""
    if request.param == "redis":
        request.getfixturevalue("on_redis")
    return request.param


def drain() -> None:
    worker_run(batch=True, scheduler=False, interval=0.001)


def limit(user, **fields) -> None:
    """Set `user`'s token limits, as the admin does (a save)."""
    token = ApiToken.objects.get(user=user)
    for name, value in fields.items():
        setattr(token, name, value)
    token.save()


def body(data, **extra):
    return {"template_id": "emergency_plan", "section_id": "2", "data": data, **extra}


def test_past_its_rpm_a_job_is_refused_at_the_door_with_generates_429(store, api, user, openai_fake,
                                                                     section2_data):
    api.get("/api/ai/templates")  # the token is issued before its limits are set
    limit(user, rpm_limit=1)
    assert api.post(JOBS, body(section2_data), format="json").status_code == 202
    refused = api.post(JOBS, body(section2_data), format="json")
    direct = api.post(GENERATE, body(section2_data), format="json")
    assert refused.status_code == direct.status_code == 429, refused.content
    assert refused.json() == direct.json()
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(refused["Retry-After"]) >= 59
    assert Job.objects.count() == 1
    assert openai_fake.chat_calls == 0  # nothing ran yet; the refusals reached nothing


def test_a_job_is_billed_to_its_callers_budget_and_ledgered_when_it_runs(store, api, user, openai_fake,
                                                                        section2_data):
    api.get("/api/ai/templates")
    limit(user, token_budget=1_000_000)
    job = api.post(JOBS, body(section2_data, use_cache=False), format="json").json()["job"]
    drain()
    assert api.get(job["status_url"]).json()["job"]["status"] == "done"
    [served] = openai_fake.served_usage()
    usage = api.get("/api/ai/usage").json()
    assert [(row["username"], row["calls"], row["prompt_tokens"], row["completion_tokens"])
            for row in usage["rows"]] == [("alice", 1, served["prompt_tokens"], served["completion_tokens"])]
    # What the job used is spent from the budget: a budget of exactly that is now exhausted.
    limit(user, token_budget=served["total_tokens"])
    refused = api.post(JOBS, body(section2_data), format="json")
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "insufficient_quota"
    assert int(refused["Retry-After"]) > 1  # until the UTC day ends


def test_a_job_whose_budget_was_spent_while_it_waited_fails_once_with_insufficient_quota(
        store, api, user, openai_fake, section2_data):
    api.get("/api/ai/templates")
    limit(user, token_budget=10)
    queued = api.post(JOBS, body(section2_data, use_cache=False), format="json")
    assert queued.status_code == 202  # nothing spent yet
    other = dict(section2_data, enterprise_info={**section2_data["enterprise_info"], "employees_count": 7})
    assert api.post(GENERATE, body(other), format="json").status_code == 200  # spends past 10 tokens
    drain()
    job = api.get(queued.json()["job"]["status_url"]).json()["job"]
    assert (job["status"], job["attempts"], job["error_status"]) == ("failed", 1, 429)
    assert job["error"]["code"] == "insufficient_quota"
    assert job["error"]["message"] == "Token budget reached: 10 tokens per day for this API token."
    assert openai_fake.chat_calls == 1  # the generate call; the job reached no provider
    usage_flush()
    assert list(UsageLedger.objects.values_list("calls", flat=True)) == [1]


def test_a_job_queued_with_a_session_is_ledgered_without_token_limits(store, user, openai_fake,
                                                                      section2_data, client):
    from tests.support.roles import user_token

    user_token(user)
    limit(user, rpm_limit=1, token_budget=1)  # the token's limits; the session has none
    client.force_login(user)
    for _ in range(2):
        assert client.post(JOBS, body(section2_data, use_cache=False),
                           content_type="application/json").status_code == 202
    drain()
    assert set(Job.objects.values_list("status", flat=True)) == {"done"}
    usage_flush()
    assert UsageLedger.objects.get(user=user).calls == 2


def test_warmup_jobs_are_neither_checked_nor_ledgered(monkeypatch, openai_fake):
    monkeypatch.setattr(cache_warmup.Command, "sleep", staticmethod(lambda seconds=0: drain()))
    out = StringIO()
    call_command("cache_warmup", "--template", "emergency_plan", "--enqueue", "--force", stdout=out)
    assert set(Job.objects.values_list("status", flat=True)) == {"done"}, out.getvalue()
    assert openai_fake.chat_calls == Job.objects.count() > 0
    usage_flush()
    assert not UsageLedger.objects.exists()


def test_a_job_whose_budget_is_only_held_by_calls_in_flight_is_retried_later(store, api, user, openai_fake,
                                                                             section2_data):
    api.get("/api/ai/templates")
    limit(user, token_budget=100)
    queued = api.post(JOBS, body(section2_data, use_cache=False), format="json").json()["job"]
    # A call of the caller in flight holds the whole budget while the job runs.
    in_flight = quota_admit(user_id=user.pk, limits=CallerLimits(budget=100), estimate=100)
    drain()
    job = api.get(queued["status_url"]).json()["job"]
    assert (job["status"], job["attempts"], job["error"]["code"]) == ("queued", 1, "budget_held")
    assert Job.objects.get(pk=queued["id"]).run_after is not None
    assert openai_fake.chat_calls == 0
    quota_settle(in_flight, used=0)
