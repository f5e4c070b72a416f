"""The built-in demo: the flaky upstream's cycle (on a moved clock), its routes
only when enabled, the setup services, and `manage.py demo` driving real
traffic against a live server (and serving from its own process)."""
from __future__ import annotations

import io
import socket

import pytest
from django.core.management import CommandError, call_command
from django.urls import Resolver404, resolve

from project.urls import urlpatterns as project_urlpatterns
from resilience.models import BreakerEvent, CallLog, Upstream
from resilience.ops.demo import (
    DEMO_PATTERNS,
    DEMO_POLICY,
    FlakyCycle,
    demo_enabled,
    demo_staff_ensure,
    demo_upstream_ensure,
    demo_urls,
)
from tests.support.redis_server import free_port

# This module doubles as the URLconf of the tests marked `urls(__name__)`: the
# project's routes plus the demo's, which the test settings (DEBUG off) leave out.
urlpatterns = [*project_urlpatterns, *DEMO_PATTERNS]

HEALTHY_AT, FAILING_AT = 1_800_000_005.5, 1_800_000_025.5  # 5.5 s and 25.5 s into a 45 s cycle


@pytest.fixture
def demo_on(settings):
    settings.RESILIENCE = {**settings.RESILIENCE, "DEMO_ENABLED": True}


@pytest.fixture
def frozen(monkeypatch):
    """Stop the cycle's clock at a chosen moment and record its waits instead of sleeping."""
    class Frozen:
        now = HEALTHY_AT
        slept: list[float] = []

    monkeypatch.setattr(FlakyCycle, "clock", staticmethod(lambda: Frozen.now))
    monkeypatch.setattr(FlakyCycle, "sleep", staticmethod(Frozen.slept.append))
    return Frozen


# -- the cycle -----------------------------------------------------------------------------
@pytest.mark.parametrize(("offset", "name", "status", "delay", "remaining"), [
    (0.05, "healthy", 200, 0.35, 19.95),  # the first tenth of a second is slow
    (0.15, "healthy", 200, 0.02, 19.85),
    (19.99, "healthy", 200, 0.02, 0.01),
    (20.0, "failing", 503, 0.0, 15.0),
    (34.9, "failing", 503, 0.0, 0.1),
    (35.0, "recovering", 200, 0.545, 10.0),
    (40.0, "recovering", 200, 0.2825, 5.0),
    (45.0, "healthy", 200, 0.35, 20.0),  # and round again
])
def test_cycle_is_a_pure_function_of_the_wall_clock(offset, name, status, delay, remaining):
    base = 1_800_000_000.0  # a multiple of the 45 s period
    assert base % FlakyCycle().period == 0
    phase = FlakyCycle().phase_at(base + offset)
    assert (phase.name, phase.status) == (name, status)
    assert phase.delay == pytest.approx(delay, abs=0.001)
    assert phase.remaining == pytest.approx(remaining, abs=0.001)


def test_about_one_healthy_answer_in_ten_is_slow():
    cycle = FlakyCycle()
    delays = [cycle.phase_at(1_800_000_000.0 + i / 100).delay for i in range(2000)]
    assert delays.count(cycle.slow) == 200


# -- the view and its routes ------------------------------------------------------------------
@pytest.mark.urls(__name__)
def test_flaky_view_follows_the_cycle_without_sleeping(client, demo_on, frozen):
    response = client.get("/demo/flaky/items/3")
    assert response.status_code == 200
    assert response.json() == {"phase": "healthy", "path": "/items/3", "next_phase_in": 14.5}
    frozen.now = FAILING_AT
    response = client.get("/demo/flaky/")
    assert response.status_code == 503
    assert response.json()["phase"] == "failing"
    frozen.now = FAILING_AT + 15
    assert client.get("/demo/flaky/x").json()["phase"] == "recovering"
    assert frozen.slept == [0.02, 0.256]  # 5.5 s into recovering: slow, easing
    assert client.post("/demo/flaky/x").status_code == 405


@pytest.mark.urls(__name__)
def test_flaky_view_answers_404_when_the_demo_is_off(client, frozen):
    assert not demo_enabled()
    assert client.get("/demo/flaky/x").status_code == 404


def test_demo_routes_exist_only_with_debug_or_the_setting(settings):
    assert demo_urls() == []
    with pytest.raises(Resolver404):
        resolve("/demo/flaky/x")  # the test settings are production-like: DEBUG off
    settings.DEBUG = True
    assert [p.name for p in demo_urls()] == ["demo-flaky", "demo-flaky-path"]
    settings.DEBUG = False
    settings.RESILIENCE = {**settings.RESILIENCE, "DEMO_ENABLED": True}
    assert demo_enabled() and len(demo_urls()) == 2


# -- setup services ----------------------------------------------------------------------------
@pytest.mark.django_db
def test_demo_upstream_is_created_then_only_repointed():
    row, created = demo_upstream_ensure(base_url="http://127.0.0.1:8000/demo/flaky")
    assert created
    assert (row.breaker_fail_max, row.breaker_reset_timeout) == (3, 5.0)
    assert row.retry_statuses == DEMO_POLICY["retry_statuses"]
    row.breaker_fail_max = 7  # an operator's change in the admin
    row.save()
    row, created = demo_upstream_ensure(base_url="http://127.0.0.1:9000/demo/flaky/")
    assert not created
    assert (row.base_url, row.breaker_fail_max) == ("http://127.0.0.1:9000/demo/flaky", 7)
    assert Upstream.objects.get(name="demo").base_url == "http://127.0.0.1:9000/demo/flaky"


@pytest.mark.django_db
def test_demo_staff_user_only_with_debug(settings, django_user_model):
    with pytest.raises(Exception, match="DEBUG"):
        demo_staff_ensure()
    settings.DEBUG = True
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    assert demo_staff_ensure() is True
    admin = django_user_model.objects.get(username="admin")
    assert admin.is_staff and admin.is_superuser and admin.check_password("admin")
    django_user_model.objects.create_user("taken")
    assert demo_staff_ensure(username="taken") is False  # an existing user is left alone
    assert not django_user_model.objects.get(username="taken").is_staff


def test_command_refuses_staff_without_debug_and_bad_arguments(db):
    with pytest.raises(CommandError, match="DEBUG"):
        call_command("demo", create_staff=True, duration=0.1, stdout=io.StringIO())
    with pytest.raises(CommandError, match="HOST:PORT"):
        call_command("demo", serve="8000", duration=0.1, stdout=io.StringIO())
    with pytest.raises(CommandError, match="--threads"):
        call_command("demo", threads=0, duration=0.1, stdout=io.StringIO())


# -- the command, end to end ------------------------------------------------------------------
def run_demo(**options) -> str:
    out = io.StringIO()
    call_command("demo", threads=2, interval=0.01, wait=5, no_color=True, stdout=out, **options)
    return out.getvalue()


@pytest.mark.urls(__name__)
def test_command_drives_traffic_through_the_client_to_a_live_server(live_server, demo_on, frozen):
    output = run_demo(base_url=f"{live_server.url}/demo/flaky", duration=1)
    assert "Upstream 'demo' created" in output
    assert f"Dashboard: {live_server.url}/dashboard/" in output
    lines = [line for line in output.splitlines() if line.strip().endswith("healthy")]
    assert lines and " closed " in lines[0]
    calls = CallLog.objects.filter(upstream="demo")
    assert calls.filter(outcome="ok").exists()
    assert calls.exclude(outcome__in=["ok", "cache_hit", "shared"]).count() == 0
    assert f"Done: {calls.count()} calls" in output


@pytest.mark.urls(__name__)
def test_command_shows_the_breaker_opening_while_the_upstream_fails(live_server, demo_on, frozen):
    frozen.now = FAILING_AT
    output = run_demo(base_url=f"{live_server.url}/demo/flaky", duration=1)
    assert " open " in output
    assert BreakerEvent.objects.filter(upstream="demo", to_state="open").exists()
    assert CallLog.objects.filter(upstream="demo", outcome="breaker_open").exists()
    assert "rejected by the open breaker" in output


@pytest.mark.urls(__name__)
def test_command_serves_the_project_from_its_own_process(transactional_db, demo_on, frozen):
    port = free_port()
    output = run_demo(serve=f"127.0.0.1:{port}", duration=1)
    assert f"Serving on http://127.0.0.1:{port}" in output
    assert f"Dashboard: http://127.0.0.1:{port}/dashboard/" in output
    assert Upstream.objects.get(name="demo").base_url == f"http://127.0.0.1:{port}/demo/flaky"
    assert CallLog.objects.filter(upstream="demo", outcome="ok").exists()
    with socket.socket() as taken:
        port = free_port()
        taken.bind(("127.0.0.1", port))
        taken.listen()
        with pytest.raises(CommandError, match="cannot listen"):
            run_demo(serve=f"127.0.0.1:{port}", duration=0.1)


def test_command_will_not_serve_the_demo_when_it_is_off():
    with pytest.raises(CommandError, match="DEBUG=true"):
        call_command("demo", serve="127.0.0.1:1", duration=0.1, stdout=io.StringIO())


@pytest.mark.parametrize("bad", ["ftp://127.0.0.1/demo/flaky", "http://127.0.0.1:{port}/demo/flaky"])
def test_a_bad_base_url_leaves_the_stored_demo_upstream_alone(db, bad):
    demo_upstream_ensure(base_url="http://127.0.0.1:8000/demo/flaky")
    before = Upstream.objects.get(name="demo").history.count()
    url = bad.format(port=free_port())  # nothing listens there
    with pytest.raises(CommandError, match=r"invalid --base-url|nothing answers"):
        call_command("demo", base_url=url, duration=0.1, wait=0.3, stdout=io.StringIO())
    stored = Upstream.objects.get(name="demo")
    assert stored.base_url == "http://127.0.0.1:8000/demo/flaky"
    assert stored.history.count() == before
