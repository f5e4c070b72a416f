"""The jobs admin: a dead letter made by the real database engine shows its
error and traceback, and the requeue action sends it back to the queue,
where a worker runs it."""
from __future__ import annotations

import pytest
from django.urls import reverse

from resilience.jobs import job_enqueue
from resilience.jobs.models import DeadLetter, Job
from resilience.jobs.worker import worker_run
from tests.support import jobs  # noqa: F401  (registers the test jobs)

pytestmark = pytest.mark.django_db(transaction=True)


def drain() -> None:
    worker_run(batch=True, scheduler=False, interval=0.001)


@pytest.fixture
def staff_client(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("ops", "ops@example.com", "pw-ops-123"))
    return client


@pytest.fixture
def dead_letter(tmp_path) -> Job:
    row = job_enqueue("tests.support.jobs.flaky", args={"counter": str(tmp_path / "runs"), "fail_times": 3})
    for _ in range(5):  # three attempts, each retry after a millisecond's backoff
        drain()
    row.refresh_from_db()
    assert (row.status, row.attempts) == (Job.Status.FAILED, 3)
    return row


def test_a_dead_letter_shows_its_error_and_traceback(staff_client, dead_letter):
    listing = staff_client.get(reverse("admin:resilience_deadletter_changelist"))
    assert listing.status_code == 200
    assert "flaky failure 3" in listing.content.decode() and str(dead_letter.pk) in listing.content.decode()
    page = staff_client.get(reverse("admin:resilience_deadletter_change", args=[dead_letter.pk]))
    text = page.content.decode()
    assert page.status_code == 200 and "Traceback" in text and "RuntimeError: flaky failure 3" in text


def test_requeue_action_sends_it_back_and_a_worker_runs_it(staff_client, dead_letter):
    done = job_enqueue("tests.support.jobs.add", args={"a": 1, "b": 2})
    drain()
    response = staff_client.post(reverse("admin:resilience_deadletter_changelist"), {
        "action": "requeue", "_selected_action": [str(dead_letter.pk)]}, follow=True)
    assert response.status_code == 200 and "Requeued 1 job(s)." in response.content.decode()
    dead_letter.refresh_from_db()
    assert (dead_letter.status, dead_letter.attempts) == (Job.Status.QUEUED, 0)
    assert not DeadLetter.objects.exists()

    drain()
    dead_letter.refresh_from_db()
    assert (dead_letter.status, dead_letter.attempts) == (Job.Status.DONE, 1)
    assert dead_letter.result == "ok after 4"  # the fourth run in all

    # Only dead letters move: the action on a done job (not listed, posted anyway) changes nothing.
    again = staff_client.post(reverse("admin:resilience_deadletter_changelist"), {
        "action": "requeue", "_selected_action": [str(done.pk)]}, follow=True)
    assert Job.objects.get(pk=done.pk).status == Job.Status.DONE
    assert "Requeued 1" not in again.content.decode()


def test_requeue_needs_staff(client, django_user_model, dead_letter):
    client.force_login(django_user_model.objects.create_user("eve", password="pw-eve-123"))
    response = client.post(reverse("admin:resilience_deadletter_changelist"), {
        "action": "requeue", "_selected_action": [str(dead_letter.pk)]})
    assert response.status_code == 302 and "/login/" in response["Location"]
    assert Job.objects.get(pk=dead_letter.pk).status == Job.Status.FAILED
