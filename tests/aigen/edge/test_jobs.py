"""Queued generations through /api/ai/jobs, run by the real database engine."""
from __future__ import annotations

import json

import pytest

from resilience.jobs.models import Job
from resilience.jobs.worker import worker_run
from resilience.models import CallLog
from resilience.telemetry.calllog import call_log_flush
from tests.support.fake_upstream import Reply

pytestmark = pytest.mark.django_db(transaction=True)

JOBS = "/api/ai/jobs"


def _body(data, template_id="emergency_plan", section_id="2", **extra):
    return {"template_id": template_id, "section_id": section_id, "data": data, **extra}


def drain() -> None:
    worker_run(batch=True, scheduler=False, interval=0.001)


def _error(response, status, code):
    assert response.status_code == status, response.content
    body = response.json()
    assert body["success"] is False and body["error"]["code"] == code, body
    return body["error"]


def test_queue_then_done_with_generates_result_shape(api, section2_data):
    response = api.post(JOBS, _body(section2_data), format="json")
    assert response.status_code == 202, response.content
    job = response.json()["job"]
    assert job["status"] == "queued" and job["result"] is None and job["priority"] == "normal"
    assert response["Location"] == job["status_url"]
    assert job["status_url"].endswith(f"/api/ai/jobs/{job['id']}")

    drain()
    done = api.get(job["status_url"]).json()["job"]
    assert done["status"] == "done" and done["attempts"] == 1 and done["error"] is None
    generated = api.post("/api/ai/generate", _body(section2_data), format="json").json()
    assert set(done["result"]) == set(generated)
    assert done["result"]["content"] == generated["content"] and generated["cached"] is True


@pytest.mark.parametrize(("field", "value"), [
    ("employees_count", "many"),  # mistyped
    ("address", None),  # missing
])
def test_data_the_template_cannot_use_is_generates_400_not_a_queued_job(api, section2_data, field, value):
    # Issue 25, item 8: this was a 202 and a job the worker dead-lettered.
    if value is None:
        del section2_data["enterprise_info"][field]
    else:
        section2_data["enterprise_info"][field] = value
    direct = api.post("/api/ai/generate", _body(section2_data), format="json")
    queued = api.post(JOBS, _body(section2_data), format="json")
    assert queued.status_code == direct.status_code == 400, queued.content
    assert queued.json()["error"] == direct.json()["error"]
    assert queued.json()["error"]["field"] == f"data.enterprise_info.{field}"
    assert not Job.objects.exists()


def test_provider_failure_is_retried_later(api, openai_fake, section2_data):
    openai_fake.fail_next(*[Reply(500)] * 4)
    job = api.post(JOBS, _body(section2_data), format="json").json()["job"]
    drain()
    waiting = api.get(f"{JOBS}/{job['id']}").json()["job"]
    assert (waiting["status"], waiting["attempts"]) == ("queued", 1)
    assert waiting["error"]["code"] == "provider_error"
    assert Job.objects.get(pk=job["id"]).run_after is not None
    # The job's provider calls were made for its owner (call logs, L10).
    call_log_flush()
    owner = Job.objects.get(pk=job["id"]).owner_id
    callers = set(CallLog.objects.filter(upstream="openai").values_list("caller_id", flat=True))
    assert owner and callers == {owner}


def test_only_the_owner_or_staff_can_read(api, make_client, staff_api, section2_data):
    from django.contrib.auth import get_user_model

    job = api.post(JOBS, _body(section2_data), format="json").json()["job"]
    mallory = make_client(get_user_model().objects.create_user("mallory", password="pw"))
    _error(mallory.get(f"{JOBS}/{job['id']}"), 404, "job_not_found")
    _error(api.get(f"{JOBS}/not-a-uuid"), 404, "job_not_found")
    _error(api.get(f"{JOBS}/00000000-0000-0000-0000-000000000000"), 404, "job_not_found")
    assert staff_api.get(f"{JOBS}/{job['id']}").status_code == 200
    assert make_client().get(f"{JOBS}/{job['id']}").status_code == 401


def test_priority_high_is_for_staff(api, staff_api, section2_data):
    err = _error(api.post(JOBS, _body(section2_data, priority="high"), format="json"), 403,
                 "priority_forbidden")
    assert err["field"] == "priority"
    job = staff_api.post(JOBS, _body(section2_data, priority="high"), format="json").json()["job"]
    assert job["priority"] == "high"
    assert api.post(JOBS, _body(section2_data, priority="low"), format="json").status_code == 202


@pytest.mark.parametrize(("body", "field"), [
    ({"section_id": "2", "data": {}}, "template_id"),
    ({"template_id": "emergency_plan", "section_id": "2"}, "data"),
    ({"template_id": "emergency_plan", "section_id": "2", "data": {}, "priority": "urgent"}, "priority"),
    ({"template_id": "emergency_plan", "section_id": "2", "data": {}, "stream": True}, "stream"),
])
def test_bad_bodies_name_the_field(api, body, field):
    assert _error(api.post(JOBS, body, format="json"), 400, "invalid")["field"] == field
    assert not Job.objects.exists()


@pytest.mark.parametrize(("constant", "path"), [("NaN", "x"), ("Infinity", "y[1]"), ("-Infinity", "z.deep")])
def test_nan_or_infinity_in_data_is_400_naming_the_field_not_500(api, section2_data, constant, path):
    """Python's parser takes them; JSON and the database's JSON check do not (issue 23, L2)."""
    data = {**section2_data, "x": 1.5, "y": [0, 2.5], "z": {"deep": 3.5}}
    raw = json.dumps(_body(data)).replace({"x": "1.5", "y[1]": "2.5", "z.deep": "3.5"}[path], constant)
    error = _error(api.post(JOBS, data=raw, content_type="application/json"), 400, "invalid")
    assert error["field"] == f"data.{path}" and "NaN" in error["message"]
    assert not Job.objects.exists()


def test_unknown_template_is_404_before_queueing(api):
    _error(api.post(JOBS, _body({}, template_id="nope"), format="json"), 404, "template_not_found")
    assert not Job.objects.exists()
