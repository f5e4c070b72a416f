"""The scheduled path: a jobs worker's schedule tick queues the evaluation
once per interval, the worker runs it, the receiver gets the notification."""
from __future__ import annotations

import pytest

from resilience.alerts.models import AlertRule
from resilience.jobs.models import Job
from resilience.jobs.worker import worker_run
from tests.resilience.alerts.test_services import calls

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_worker_evaluates_the_rules_on_schedule_and_notifies(provider, fake, receiver, alerting):
    alerting("success-rate-critical")
    AlertRule.objects.filter(name="success-rate-critical").update(for_seconds=0)
    calls(20, failing=True, fake=fake)

    worker_run(batch=True, scheduler=True, interval=0.001)  # one schedule tick, then the queues drained

    [job] = Job.objects.filter(name="resilience.alerts_evaluate")
    assert (job.status, job.result) == (Job.Status.DONE, {"moves": 1})
    [post] = receiver.posts()
    assert receiver.verified(post) and post.json()["alerts"][0]["transition"] == "firing"
