"""The upstream change page: live state and buttons at the top (POST only,
staff with change permission, CSRF-checked), list fields as widgets that
validate item by item, a reason for change kept in history, the site header."""
from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse

from resilience import exceptions as errors
from resilience import upstream
from resilience.models import Upstream
from resilience.ops.admin_forms import UpstreamForm
from tests.resilience.test_admin import page_data
from tests.support.fake_upstream import Reply

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("ops", email="", password=None))
    return client


@pytest.fixture
def failing(fake, make_upstream):
    row = make_upstream("payments", retry_total=0, breaker_fail_max=2, cache_ttl=60, health_path="/health")
    fake.script("/boom", Reply(503))
    upstream("payments").get("/ok")
    for _ in range(2):
        with pytest.raises(errors.UpstreamError):
            upstream("payments").get("/boom")
    assert upstream("payments").breaker.status()["state"] == "open"
    return row


def button(row: Upstream, name: str) -> str:
    return reverse(f"admin:resilience_upstream_{name}", args=[row.pk])


def test_change_page_shows_live_state_from_rollups_and_the_buttons(staff_client, failing):
    page = staff_client.get(reverse("admin:resilience_upstream_change", args=[failing.pk]))
    html = page.content.decode()
    live = page.context["live"]
    assert live["breaker"]["state"] == "open"
    assert (live["stats"]["calls"], live["error_rate"]) == (3, "66.7%")
    assert live["p95"].endswith(" ms")
    for name in ("reset_breaker", "probe", "clear_cache"):
        assert f'action="{button(failing, name)}"' in html
    assert html.count("csrfmiddlewaretoken") >= 4  # the three buttons and the policy form
    assert "<title>payments | Change upstream | Resilience gateway admin</title>" in html
    assert 'id="site-name"><a href="/admin/">Resilience gateway</a>' in html


def test_buttons_reset_probe_and_clear(staff_client, failing, fake):
    response = staff_client.post(button(failing, "reset_breaker"), follow=True)
    assert upstream("payments").breaker.status()["state"] == "closed"
    assert "Breaker of payments reset (now closed)." in response.content.decode()
    upstream("payments").get("/cached")  # cached, next to the fixture's /ok
    response = staff_client.post(button(failing, "clear_cache"), follow=True)
    assert "Removed 2 cached response(s) of payments." in response.content.decode()
    assert not upstream("payments").get("/cached").from_cache
    response = staff_client.post(button(failing, "probe"), follow=True)
    assert response.redirect_chain[-1][0] == reverse("admin:resilience_upstream_change", args=[failing.pk])
    shown = [str(m) for m in response.context["messages"]]
    assert any(m.startswith("payments: 200 in") for m in shown), shown
    assert fake.count("/health") == 1


def test_buttons_refuse_get_missing_csrf_and_view_only_staff(failing, django_user_model, staff_client):
    assert staff_client.get(button(failing, "reset_breaker")).status_code == 405
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(django_user_model.objects.get(username="ops"))
    assert strict.post(button(failing, "reset_breaker")).status_code == 403
    viewer = django_user_model.objects.create_user("viewer", password=None, is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_upstream"))
    client = Client()
    client.force_login(viewer)
    assert client.post(button(failing, "reset_breaker")).status_code == 403
    assert upstream("payments").breaker.status()["state"] == "open"
    anonymous = Client().post(button(failing, "reset_breaker"))
    assert anonymous.status_code == 302 and "/admin/login/" in anonymous["Location"]


def test_list_fields_are_widgets_that_validate_each_item(make_upstream):
    row = make_upstream("payments", retry_statuses=[502, 503], cache_vary_headers=["Accept"])
    form = UpstreamForm(instance=row)
    html = str(form["retry_methods"])
    assert 'type="checkbox"' in html and 'value="POST"' in html
    assert 'value="502, 503"' in str(form["retry_statuses"])
    data = {**form.initial, "retry_statuses": "429, 503 503, 99, abc", "retry_methods": ["GET", "POST"],
            "cache_methods": ["GET"], "cache_vary_headers": "Accept, Cookie", "served_models": "",
            "default_headers": "{}"}
    bad = UpstreamForm(data, instance=row)
    assert not bad.is_valid()
    assert bad.errors["retry_statuses"] == [
        "'99': not an HTTP error status (4xx or 5xx); 'abc': not a number"]
    assert bad.errors["cache_vary_headers"] == ["'Cookie': credentials never go into a cache key"]
    good = UpstreamForm({**data, "retry_statuses": "429, 503 503", "cache_vary_headers": "Accept-Language"},
                        instance=row)
    assert good.is_valid(), good.errors
    assert good.cleaned_data["retry_statuses"] == [429, 503]
    assert good.cleaned_data["retry_methods"] == ["GET", "POST"]


def test_reason_for_change_is_kept_in_history(staff_client, make_upstream):
    row = make_upstream("payments")
    change_url = reverse("admin:resilience_upstream_change", args=[row.pk])
    data = page_data(staff_client.get(change_url))
    data.update({"retry_statuses": "503", "change_reason": "only 503 is transient here"})
    assert staff_client.post(change_url, data).status_code == 302
    row.refresh_from_db()
    assert row.retry_statuses == [503]
    latest = row.history.first()
    assert latest.history_change_reason == "only 503 is transient here"
    assert latest.history_user.username == "ops"
    history = staff_client.get(reverse("admin:resilience_upstream_history", args=[row.pk]))
    assert "only 503 is transient here" in history.content.decode()
