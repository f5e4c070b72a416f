"""Breaker controls on a three-endpoint pool, through the API, the admin and
`manage.py breaker`: reset one endpoint, reset all, force one open for a
while (then a probe decides); every change recorded with who made it; every
answer the state as it really is. Breaker state on the real Redis (shared by
every worker); clocks are moved, not waited for."""
from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.core.management.base import CommandError
from rest_framework.test import APIClient

from aigen.edge.tokens import token_issue
from resilience import exceptions, upstream
from resilience.client import reset_clients
from resilience.models import BreakerEvent, Endpoint
from resilience.telemetry.calllog import call_log_flush
from tests.support.fake_upstream import Reply

pytestmark = pytest.mark.django_db
API = "/api/resilience/upstreams/pool/breakers"


@pytest.fixture
def pool(fakes, make_upstream, on_redis, breaker_clock):
    """Three endpoints a, b, c (priority order), each on its own server; a
    breaker opens at the first failure and probes after 10 s."""
    row = make_upstream("pool", endpoint_strategy="priority", breaker_fail_max=1, breaker_reset_timeout=10,
                        retry_total=0)
    for index, name in enumerate("abc"):
        Endpoint.objects.create(upstream=row, name=name, base_url=fakes[index].url, priority=index)
    reset_clients()
    return row


def all_open(fakes) -> None:
    for server in fakes:
        server.script("/item", Reply(500))
    for _ in range(3):
        with pytest.raises(exceptions.UpstreamError):
            upstream("pool").get("/item")
    for server in fakes:
        server.script("/item", Reply(200, {"ok": True}))


def states(body) -> dict[str, str]:
    return {e["name"]: e["state"] for e in body["endpoints"]}


def operator(*, perm: bool = True) -> APIClient:
    """Staff with view_upstream, and change_upstream unless `perm` is False."""
    user = get_user_model().objects.create_user(username="olga" if perm else "sam", is_staff=True)
    codenames = ["view_upstream", "change_upstream"] if perm else ["view_upstream"]
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token_issue(user=user)}")
    return client


def test_the_api_resets_one_endpoint_then_all_and_answers_every_state(pool, fakes):
    all_open(fakes)
    client = operator()
    assert states(client.get(API).json()) == {"a": "open", "b": "open", "c": "open"}

    body = client.post(f"{API}/reset", {"endpoint": "b"}, format="json").json()
    assert states(body) == {"a": "open", "b": "closed", "c": "open"}
    assert upstream("pool").get("/item").json() == {"ok": True}
    assert [s.count("/item") for s in fakes] == [1, 2, 1]  # only b takes calls

    body = client.post(f"{API}/reset", {}, format="json").json()
    assert states(body) == {"a": "closed", "b": "closed", "c": "closed"}
    assert body["breaker"]["state"] == "closed"
    call_log_flush()
    reasons = set(BreakerEvent.objects.filter(to_state="closed").values_list("reason", flat=True))
    assert reasons == {"endpoint b: reset by olga", "endpoint a: reset by olga", "endpoint c: reset by olga"}


def test_the_old_reset_route_now_closes_every_endpoint_not_only_the_first(pool, fakes):
    all_open(fakes)
    client = operator()
    body = client.post("/api/resilience/upstreams/pool/breaker/reset").json()
    assert body["breaker"]["state"] == "closed"
    assert states(client.get(API).json()) == {"a": "closed", "b": "closed", "c": "closed"}


def test_force_open_keeps_the_endpoint_out_for_the_time_asked_then_a_probe_decides(pool, fakes,
                                                                                    breaker_clock):
    client = operator()
    body = client.post(f"{API}/open", {"endpoint": "a", "seconds": 60, "reason": "drill"},
                       format="json").json()
    assert states(body) == {"a": "open", "b": "closed", "c": "closed"}
    [a] = [e for e in body["endpoints"] if e["name"] == "a"]
    assert a["forced"]["by"] == "olga" and a["forced"]["reason"] == "drill"
    assert a["retry_after"] == pytest.approx(60, abs=0.01)  # not the policy's 10 s

    for _ in range(3):
        upstream("pool").get("/item")
    assert [s.count("/item") for s in fakes] == [0, 3, 0]  # the primary is skipped while forced open
    breaker_clock.advance(59)
    upstream("pool").get("/item")
    assert fakes[0].count("/item") == 0
    breaker_clock.advance(2)  # the time is over: the next call probes a, which answers, and closes it
    upstream("pool").get("/item")
    assert fakes[0].count("/item") == 1
    assert states(client.get(API).json())["a"] == "closed"
    call_log_flush()
    assert BreakerEvent.objects.filter(reason="endpoint a: forced open by olga for 60s: drill",
                                       to_state="open").exists()


def test_bad_requests_name_the_field_and_unknown_things_are_404(pool):
    client = operator()
    response = client.post(f"{API}/open", {"endpoint": "a"}, format="json")
    assert response.status_code == 400 and response.json()["error"]["field"] == "seconds"
    response = client.post(f"{API}/open", {"seconds": 30}, format="json")
    assert response.status_code == 400 and response.json()["error"]["field"] == "endpoint"
    response = client.post(f"{API}/open", {"endpoint": "zz", "seconds": 30}, format="json")
    assert response.status_code == 404 and response.json()["error"]["code"] == "unknown_endpoint"
    assert client.post("/api/resilience/upstreams/nope/breakers/reset", {}, format="json").status_code == 404
    Endpoint.objects.filter(name="c").update(enabled=False)
    response = client.post(f"{API}/reset", {"endpoint": "c"}, format="json")
    assert response.status_code == 409 and response.json()["error"]["code"] == "breaker_control_refused"


def test_staff_without_the_change_permission_may_look_but_not_act(pool):
    client = operator(perm=False)
    assert client.get(API).status_code == 200
    for path, body in ((f"{API}/reset", {}), (f"{API}/open", {"endpoint": "a", "seconds": 30})):
        response = client.post(path, body, format="json")
        assert response.status_code == 403 and response.json()["error"]["code"] == "permission_denied"
    assert APIClient().get(API).status_code == 401
    # Looking needs view_upstream too, as the admin's upstream pages do.
    nobody = get_user_model().objects.create_user(username="staff-only", is_staff=True)
    staff_only = APIClient()
    staff_only.credentials(HTTP_AUTHORIZATION=f"Bearer {token_issue(user=nobody)}")
    assert staff_only.get(API).status_code == 403


def test_the_admin_actions_reset_and_force_open_with_the_permission(pool, fakes, client):
    all_open(fakes)
    user = get_user_model().objects.create_user(username="ada", password="pw-ada-1", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=["view_endpoint", "change_endpoint"]))
    client.force_login(user)
    url = "/admin/resilience/endpoint/"
    b = Endpoint.objects.get(name="b")
    api = operator()
    # Without change_upstream the breaker actions are not offered (and refused when posted).
    assert "force_open_5m" not in client.get(url).content.decode()
    client.post(url, {"action": "reset_breakers", "_selected_action": [b.pk]})
    assert states(api.get(API).json())["b"] == "open"

    user.user_permissions.add(Permission.objects.get(codename="change_upstream"))
    user = get_user_model().objects.get(pk=user.pk)
    client.force_login(user)
    client.post(url, {"action": "reset_breakers", "_selected_action": [b.pk]})
    assert states(api.get(API).json()) == {"a": "open", "b": "closed", "c": "open"}
    client.post(url, {"action": "force_open_5m", "_selected_action": [b.pk]})
    [got] = [e for e in api.get(API).json()["endpoints"] if e["name"] == "b"]
    assert got["state"] == "open" and got["forced"]["by"] == "ada"
    assert got["retry_after"] == pytest.approx(300, abs=0.01)


def test_manage_py_breaker_shows_resets_and_forces_open(pool, fakes):
    all_open(fakes)
    out = StringIO()
    call_command("breaker", "pool", "--endpoint", "c", "--reset", "--by", "cron", stdout=out)
    assert "  c: closed" in out.getvalue() and "  a: open, next probe in 10s" in out.getvalue()
    out = StringIO()
    call_command("breaker", "pool", "--endpoint", "c", "--open", "120", "--reason", "upgrade", "--by", "cron",
                 stdout=out)
    assert "  c: open, next probe in 120s (forced open by cron: upgrade)" in out.getvalue()
    out = StringIO()
    call_command("breaker", "pool", "--reset", stdout=out)
    assert out.getvalue().splitlines() == ["pool: closed", "  a: closed", "  b: closed", "  c: closed"]
    with pytest.raises(CommandError, match="has endpoints: name one"):
        call_command("breaker", "pool", "--open", "30")
