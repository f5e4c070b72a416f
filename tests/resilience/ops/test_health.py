"""/readyz on django-health-check's checks: a database that cannot be
reached makes it 503; an unhealthy upstream, a stalled job queue or an
unreachable Redis make it "degraded" with 200 (the service still answers)."""
from __future__ import annotations

import datetime

import pytest
from django.db import OperationalError, connections
from django.test import Client
from django.utils import timezone

from resilience.jobs.models import Job, ProbeResult
from resilience.models import Upstream
from resilience.ops import health
from tests.support.redis_server import free_port

pytestmark = pytest.mark.django_db



@pytest.fixture
def client(readyz_client):
    """These tests read /readyz's details: as the scraper (resilience/conftest.py)."""
    return readyz_client

@pytest.fixture
def broken_database(monkeypatch):
    """A real connection to a database that is not there, as /readyz's database."""
    broken = connections.create_connection("default")
    if broken.vendor == "sqlite":
        broken.settings_dict = {**broken.settings_dict, "NAME": "/nonexistent-dir/db.sqlite3"}
    else:
        broken.settings_dict = {**broken.settings_dict, "PORT": free_port()}
    connections["readyz-broken"] = broken
    monkeypatch.setattr(health, "DATABASE_ALIAS", "readyz-broken")
    yield
    broken.close()
    del connections["readyz-broken"]


def test_ready_with_every_check_named(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    assert {"database", "cache", "upstreams", "workers"} <= set(body["checks"])
    assert all(check["ok"] for check in body["checks"].values())
    assert body["checks"]["database"]["vendor"] == connections["default"].vendor


def test_a_database_that_cannot_be_reached_is_503(client, broken_database):
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"]["ok"] is False and "Unavailable" in body["checks"]["database"]["error"]


def test_an_unhealthy_upstream_is_degraded_not_down(client):
    Upstream.objects.create(name="probed", base_url="http://127.0.0.1:9", health_path="/health",
                            probe_interval=30)
    ProbeResult.objects.create(upstream="probed", ok=False, status=503, error="HTTP 503")
    response = client.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    assert body["checks"]["upstreams"]["ok"] is False
    assert body["checks"]["upstreams"]["unhealthy"] == ["probed"]
    assert "probed" in body["checks"]["upstreams"]["error"]
    ProbeResult.objects.create(upstream="probed", ok=True, status=200)
    assert client.get("/readyz").json()["status"] == "ready"


def test_a_stalled_job_queue_is_degraded(client, settings):
    settings.RESILIENCE = {**settings.RESILIENCE, "JOBS_STALL_SECONDS": 60}
    job = Job.objects.create(name="resilience.prune")
    Job.objects.filter(pk=job.pk).update(created_at=timezone.now() - datetime.timedelta(minutes=5))
    body = client.get("/readyz").json()
    assert body["status"] == "degraded"
    assert body["checks"]["workers"]["ok"] is False and "jobs_worker" in body["checks"]["workers"]["error"]
    Job.objects.filter(pk=job.pk).update(run_after=timezone.now() + datetime.timedelta(minutes=1))
    assert client.get("/readyz").json()["checks"]["workers"]["ok"] is True  # not due yet: nobody is late


def test_redis_is_pinged_when_configured(client, settings, redis_url):
    settings.REDIS_URL = redis_url
    body = client.get("/readyz").json()
    assert body["checks"]["redis"]["ok"] is True
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    body = client.get("/readyz").json()
    assert body["status"] == "degraded"
    assert body["checks"]["redis"]["ok"] is False and "Redis" in body["checks"]["redis"]["error"]


def test_anonymous_callers_learn_only_whether_it_is_ready(readyz_client, django_user_model):
    Upstream.objects.create(name="secretly-named", base_url="http://127.0.0.1:9", health_path="/health",
                            probe_interval=30)
    ProbeResult.objects.create(upstream="secretly-named", ok=False, status=503, error="HTTP 503")
    anonymous = Client().get("/readyz")
    assert anonymous.status_code == 200 and anonymous.json() == {"status": "degraded"}
    assert "secretly-named" not in anonymous.content.decode()
    wrong_token = Client(HTTP_AUTHORIZATION="Bearer not-the-token").get("/readyz")
    assert wrong_token.json() == {"status": "degraded"}
    plain = Client()
    plain.force_login(django_user_model.objects.create_user("plain"))
    assert plain.get("/readyz").json() == {"status": "degraded"}
    staff = Client()
    staff.force_login(django_user_model.objects.create_user("ops", is_staff=True))
    assert staff.get("/readyz").json()["checks"]["upstreams"]["unhealthy"] == ["secretly-named"]
    assert readyz_client.get("/readyz").json()["checks"]["database"]["vendor"]  # the metrics token


def test_anonymous_callers_still_get_the_503(broken_database):
    response = Client().get("/readyz")
    assert response.status_code == 503 and response.json() == {"status": "unavailable"}


def test_a_staff_session_during_a_database_outage_gets_the_status(broken_database, django_user_model,
                                                                  monkeypatch):
    staff = Client()
    staff.force_login(django_user_model.objects.create_user("ops-outage", is_staff=True))
    # The session's user is read from the database that is now down.
    monkeypatch.setattr("django.contrib.auth.get_user", _raise_database_error)
    response = staff.get("/readyz")
    assert response.status_code == 503 and response.json() == {"status": "unavailable"}


def _raise_database_error(request):
    raise OperationalError("the database is down")
