"""Nothing echoes a secret (issue 23, M1): a provider's error answer reaches
whoever reads it (the /v1 pass-through, SDK errors, job tracebacks) with the
credentials the attempt carried masked, in both faces: the policy's own, a
key the caller put in its headers (as the openai SDK does), and query keys
in an echoed URL."""
from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync

from resilience import exceptions as errors
from resilience import upstream
from resilience.jobs import job_enqueue
from resilience.jobs.models import Job
from resilience.jobs.worker import worker_run
from resilience.models import CallLog
from resilience.telemetry.calllog import call_log_flush
from tests.support import jobs  # noqa: F401  (registers the test jobs)
from tests.support.fake_upstream import Reply

SECRET = "sk-echoed-8Hk3/Zp+q=="
CALLER_KEY = "sk-caller-4Rt9Lm2Vq"


@pytest.fixture
def keyed(make_upstream, settings):
    def make(**fields):
        settings.RESILIENCE = {**settings.RESILIENCE, "SECRETS": {"UPSTREAM_KEY": SECRET}}
        return make_upstream(auth_env_var="UPSTREAM_KEY", retry_total=0, **fields)
    return make


def _call(face: str, **kwargs):
    if face == "sync":
        return upstream("api").get("/x", raise_for_status=False, **kwargs)
    return async_to_sync(upstream("api").aget)("/x", raise_for_status=False, **kwargs)


def _shown(response) -> str:
    headers = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
    reason = getattr(response, "reason", None) or response.reason_phrase
    return f"{response.status_code} {reason}\n{headers}\n{response.text}\n{response.url}"


@pytest.mark.parametrize("face", ["sync", "async"])
def test_a_401_echoing_the_key_is_masked_in_body_and_headers(face, keyed, fake, caplog):
    keyed(auth_kind="bearer")
    fake.script("/x", Reply(401, headers={"X-Echo": f"got Bearer {SECRET}"}, body={"error": {
        "message": f"Incorrect API key provided: {SECRET}", "type": "invalid_request_error"}}))
    with caplog.at_level("DEBUG"):  # the transports' own debug lines (httpcore2 prints headers)
        response = _call(face)
    assert fake.requests[0].headers["Authorization"] == f"Bearer {SECRET}"  # it was sent...
    shown = _shown(response) + caplog.text
    assert SECRET not in shown  # ...and nothing passes it on
    assert response.json()["error"]["message"] == "Incorrect API key provided: REDACTED"
    assert response.headers["X-Echo"] == "got Bearer REDACTED"


@pytest.mark.parametrize("face", ["sync", "async"])
def test_a_500_echoing_the_url_masks_its_query_key(face, keyed, fake):
    keyed(auth_kind="query", auth_name="api_key")
    echoed = f"{fake.url}/x?q=1&api_key={SECRET}"
    fake.script("/x", Reply(500, body=f"upstream failed: GET {echoed}".encode()))
    response = _call(face, params={"q": "1"})
    assert fake.requests[0].params["api_key"] == SECRET
    assert SECRET not in _shown(response)
    assert "api_key=REDACTED" in response.text and "q=1" in response.text


def test_forms_a_body_escapes_the_key_in_are_masked_too(keyed, fake):
    keyed(auth_kind="header", auth_name="X-Partner-Key")
    escaped = SECRET.replace("/", "\\/")  # JSON with escaped slashes, as PHP writes it
    encoded = "sk-echoed-8Hk3%2FZp%2Bq%3D%3D"
    fake.script("/x", Reply(403, body=f'{{"key": "{escaped}", "url": "/x?token={encoded}"}}'.encode(),
                            headers={"Content-Type": "application/json"}))
    response = _call("sync")
    assert escaped not in response.text and encoded not in response.text
    assert response.json() == {"key": "REDACTED", "url": "/x?token=REDACTED"}


@pytest.mark.parametrize("face", ["sync", "async"])
def test_a_key_the_caller_sent_is_masked_in_what_it_gets_back(face, make_upstream, fake):
    make_upstream(retry_total=0)  # no credential of its own: the caller authenticates (the SDK's way)
    fake.script("/x", Reply(401, body=f"Incorrect API key provided: {CALLER_KEY}".encode()))
    response = _call(face, headers={"Authorization": f"Bearer {CALLER_KEY}"})
    assert response.status_code == 401 and response.text == "Incorrect API key provided: REDACTED"


def test_the_raised_error_carries_the_masked_answer_and_the_call_log_no_key(keyed, fake):
    keyed(auth_kind="bearer", retry_statuses=[503], log_sample_rate=1.0)
    fake.script("/x", Reply(400, body=f"bad request for key {SECRET}".encode()))
    with pytest.raises(errors.UpstreamHTTPError) as caught:
        upstream("api").get("/x")
    assert caught.value.response.text == "bad request for key REDACTED"
    call_log_flush()
    assert SECRET not in repr(list(CallLog.objects.values()))


@pytest.mark.django_db(transaction=True)
def test_a_job_reporting_what_the_upstream_said_keeps_no_key(keyed, fake):
    keyed(auth_kind="query", auth_name="key")
    fake.script("/x", Reply(401, body=f"Incorrect API key provided: {SECRET}".encode()))
    row = job_enqueue("tests.support.jobs.upstream_said", args={"name": "api", "path": "/x"})
    worker_run(batch=True, scheduler=False, interval=0.001)
    row = Job.objects.get(pk=row.pk)
    assert row.status == Job.Status.FAILED
    assert "said 401: Incorrect API key provided: REDACTED" in row.error["message"]
    assert "key=REDACTED" in row.error["message"]  # the URL the answer came from
    assert SECRET not in f"{row.error!r}\n{row.traceback}"


def test_a_probe_shows_why_it_failed_without_the_key(keyed, fake, client, django_user_model):
    from django.urls import reverse
    from rest_framework.test import APIClient

    from aigen.edge.tokens import token_issue

    row = keyed(auth_kind="bearer", health_path="/health")
    fake.script("/health", Reply(401, body=f"Incorrect API key provided: {SECRET}".encode()))
    staff = django_user_model.objects.create_superuser("root", "r@example.com", "pw")
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {token_issue(user=staff)}")
    response = api.post("/api/resilience/upstreams/api/probe")
    probe = response.json()["probe"]
    assert (probe["ok"], probe["status"]) == (False, 401)
    assert probe["detail"] == "Incorrect API key provided: REDACTED"
    assert SECRET not in response.content.decode()
    # The admin's probe button says the same.
    client.force_login(staff)
    page = client.post(reverse("admin:resilience_upstream_probe", args=[row.pk]), follow=True)
    assert "failed (401 Incorrect API key provided: REDACTED)" in page.content.decode()
    assert SECRET not in page.content.decode()


def test_a_successful_answer_is_left_as_it_came(keyed, fake):
    # Only error answers are masked: a success is the caller's data, and
    # scanning every body would cost every call.
    keyed(auth_kind="bearer")
    fake.script("/x", Reply(200, body={"echo": SECRET}))
    assert _call("sync").json() == {"echo": SECRET}
