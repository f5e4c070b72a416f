"""The advisor's API: findings (auth), per upstream, suggestion actions
(staff), benchmarks queued as bounded jobs (staff), resources (staff)."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from resilience.advisor.models import Suggestion
from resilience.jobs.models import Job
from resilience.models import Upstream
from tests.resilience.advisor.conftest import minute_delta, traffic
from tests.support.roles import api_client

pytestmark = pytest.mark.django_db

API = "/api/resilience"


def client_for(*, staff: bool) -> APIClient:
    """Staff with view and change permissions, or a plain API caller (the
    whole matrix of roles: tests/resilience/ops/test_permissions.py)."""
    return api_client("operator" if staff else "user")


@pytest.fixture
def wasteful(policy):
    row = policy("api", retry_total=2, read_timeout=0.5)
    traffic("api", since=timedelta(hours=2), every=2, now=timezone.now(),
            make=lambda _: minute_delta(calls=1, attempts=3, outcome="http_error", signals={"retried": 1}))
    return row


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert body["success"] is False and body["error"]["code"] == code
    return body["error"]


@pytest.mark.parametrize("method,path", [
    ("get", f"{API}/findings"), ("get", f"{API}/upstreams/api/findings"),
    ("post", f"{API}/suggestions/1/apply"), ("post", f"{API}/benchmarks"), ("get", f"{API}/resources")])
def test_anonymous_gets_401(method, path):
    assert_error(getattr(APIClient(), method)(path), 401, "not_authenticated")


@pytest.mark.parametrize("method,path", [
    ("post", f"{API}/suggestions/1/apply"), ("post", f"{API}/suggestions/1/dismiss"),
    ("post", f"{API}/suggestions/1/rollback"), ("post", f"{API}/benchmarks"),
    ("get", f"{API}/benchmarks/00000000-0000-0000-0000-000000000000"), ("get", f"{API}/resources")])
def test_non_staff_gets_403(method, path):
    assert_error(getattr(client_for(staff=False), method)(path), 403, "permission_denied")


def test_findings_with_evidence_and_suggestions(wasteful):
    body = api_client("viewer").get(f"{API}/findings").json()
    assert body["success"] is True
    finding = next(f for f in body["findings"] if f["kind"] == "retry_waste")
    assert set(finding["evidence"]) >= {"figures", "windows", "threshold"}
    assert finding["proposal"] == {"field": "retry_total", "from_value": 2, "to_value": 0,
                                   "expected": finding["proposal"]["expected"]}
    suggestion = next(s for s in body["suggestions"] if s["kind"] == "retry_waste")
    assert suggestion["status"] == "open"

    one = client_for(staff=True).get(f"{API}/upstreams/api/findings").json()
    assert [f["kind"] for f in one["findings"]] == \
        [f["kind"] for f in body["findings"] if f["upstream"] == "api"]


def test_unknown_upstream_findings_is_404(policy):
    user = api_client("viewer")
    assert_error(user.get(f"{API}/upstreams/nope/findings"), 404, "unknown_upstream")


def test_staff_apply_then_rollback_then_conflict(wasteful):
    staff = client_for(staff=True)
    staff.get(f"{API}/findings")
    pk = Suggestion.objects.get(kind="retry_waste").pk
    applied = staff.post(f"{API}/suggestions/{pk}/apply")
    assert applied.status_code == 200, applied.content
    assert applied.json()["suggestion"]["status"] == "applied"
    assert Upstream.objects.get(name="api").retry_total == 0
    assert_error(staff.post(f"{API}/suggestions/{pk}/apply"), 409, "suggestion_conflict")
    assert staff.post(f"{API}/suggestions/{pk}/rollback").json()["suggestion"]["status"] == "rolled_back"
    assert Upstream.objects.get(name="api").retry_total == 2
    assert_error(staff.post(f"{API}/suggestions/999999/dismiss"), 404, "suggestion_not_found")


@pytest.mark.parametrize("body,field", [
    ({"upstream": "api", "requests": 100000}, "requests"),
    ({"upstream": "api", "concurrency": 500}, "concurrency"),
    ({"upstream": "api", "requests": 0}, "requests"),
    ({}, "upstream"),
])
def test_benchmark_bounds(policy, body, field):
    policy("api")
    response = client_for(staff=True).post(f"{API}/benchmarks", body, format="json")
    error = assert_error(response, 400, "invalid")
    assert error["field"] == field


def test_benchmark_unknown_upstream_and_bad_path(policy):
    policy("api")
    staff = client_for(staff=True)
    assert_error(staff.post(f"{API}/benchmarks", {"upstream": "nope"}, format="json"), 404,
                 "unknown_upstream")
    assert_error(staff.post(f"{API}/benchmarks", {"upstream": "api", "path": "http://evil/"}, format="json"),
                 400, "invalid_upstream_path")
    assert_error(staff.get(f"{API}/benchmarks/not-a-uuid"), 404, "benchmark_not_found")


@pytest.mark.django_db(transaction=True)
def test_a_queued_benchmark_runs_as_a_job_and_keeps_its_report(fake, live_upstream):
    from resilience.jobs.worker import worker_run

    live_upstream("live")
    staff = client_for(staff=True)
    queued = staff.post(f"{API}/benchmarks", {"upstream": "live", "path": "/ping", "requests": 20,
                                              "concurrency": 2}, format="json")
    assert queued.status_code == 202, queued.content
    job = queued.json()["job"]
    assert job["status"] == "queued" and queued["Location"] == job["status_url"]
    worker_run(batch=True, scheduler=False, interval=0.001)
    done = staff.get(f"{API}/benchmarks/{job['id']}").json()["job"]
    assert done["status"] == "done", done
    report = done["report"]
    assert report["client"]["requests"] == report["bare"]["requests"] == 20
    assert report["client"]["ok"] == 20 and report["bare"]["ok"] == 20
    assert fake.count("/ping") == 40
    assert Job.objects.get(pk=job["id"]).result == report


def test_resources_lists_this_process(fake, live_upstream):
    from resilience import upstream

    live_upstream("live", bulkhead_max=3)
    upstream("live").get("/x")
    body = client_for(staff=True).get(f"{API}/resources").json()
    assert body["success"] is True
    mine = body["processes"][0]
    assert mine["rss_bytes"] > 0 and mine["threads"] >= 1
    assert mine["upstreams"]["live"]["pool"] == {"in_use": 0, "size": 10}
    assert mine["upstreams"]["live"]["bulkhead"] == {"in_flight": 0, "limit": 3, "waiting": 0}
    assert body["totals"]["processes"] >= 1


def test_findings_per_endpoint_and_a_bad_query(policy):
    policy("api", retry_total=2, read_timeout=0.5)
    now = timezone.now()
    from resilience.telemetry.rollups import minute_of, rollups_write

    rollups_write({("api", "search", minute_of((now - timedelta(minutes=m)).timestamp())): minute_delta(
        calls=1, attempts=3, outcome="http_error", signals={"retried": 1}) for m in range(2, 60)})
    user = api_client("viewer")
    body = user.get(f"{API}/findings?by=endpoint").json()
    found = {(f["kind"], f["endpoint"]) for f in body["findings"]}
    assert ("retry_waste", "search") in found and {endpoint for _, endpoint in found} == {"search"}
    assert assert_error(user.get(f"{API}/findings?by=galaxy"), 400, "invalid")["field"] == "by"
