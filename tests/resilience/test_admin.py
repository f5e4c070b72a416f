"""The admin: policies validated with clear messages, history with rollback,
live breaker state in the list, and the operator actions."""
from __future__ import annotations

import pytest
from django.urls import reverse

from resilience import exceptions as errors
from resilience import upstream
from resilience.models import Upstream
from tests.support.fake_upstream import Reply

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client, django_user_model):
    user = django_user_model.objects.create_superuser("ops", "ops@example.com", "pw-ops-123")
    client.force_login(user)
    return client


def form_data(form) -> dict:
    """What a browser would post for a rendered model form."""
    data = {}
    for name, field in form.fields.items():
        value = form[name].value()
        if value is None or value is False:
            continue
        if value is True:
            data[name] = "on"
        elif isinstance(value, str):  # already as rendered (JSON fields render JSON text)
            data[name] = value
        else:
            data[name] = field.prepare_value(value)
    return data


def page_data(page) -> dict:
    """What a browser would post for a rendered change page: the model form
    and each inline's management form (the endpoints inline)."""
    data = form_data(page.context["adminform"].form)
    inlines = page.context.get("inline_admin_formsets", [])
    for inline in inlines:
        management = inline.formset.management_form
        for name in management.fields:
            data[management.add_prefix(name)] = management[name].value()
    return data


def test_add_form_rejects_bad_values_with_clear_messages(staff_client):
    page = staff_client.get(reverse("admin:resilience_upstream_add"))
    data = page_data(page)
    data.update(name="bad", base_url="ftp://files.example", retry_statuses="[200, 999]",
                cache_vary_headers='["Authorization"]', connect_timeout="-1")
    response = staff_client.post(reverse("admin:resilience_upstream_add"), data)
    assert response.status_code == 200
    errors_by_field = response.context["adminform"].form.errors
    assert "http://" in str(errors_by_field["base_url"]) or "valid URL" in str(errors_by_field["base_url"])
    assert "connect_timeout" in errors_by_field
    assert not Upstream.objects.filter(name="bad").exists()


def test_sample_rate_is_edited_in_its_own_fieldset_and_bounded(staff_client):
    page = staff_client.get(reverse("admin:resilience_upstream_add"))
    html = " ".join(page.content.decode().split())
    assert "Call log" in html and "successful calls are sampled at this rate" in html
    data = page_data(page)
    assert float(data["log_sample_rate"]) == 0.01  # the documented default
    data.update(name="sampled", base_url="https://api.example.com", log_sample_rate="1.5")
    response = staff_client.post(reverse("admin:resilience_upstream_add"), data)
    assert "log_sample_rate" in response.context["adminform"].form.errors
    data["log_sample_rate"] = "0.25"
    assert staff_client.post(reverse("admin:resilience_upstream_add"), data).status_code == 302
    assert Upstream.objects.get(name="sampled").log_sample_rate == 0.25


def test_history_and_rollback(staff_client, make_upstream):
    row = make_upstream(read_timeout=5.0)
    change_url = reverse("admin:resilience_upstream_change", args=[row.pk])
    page = staff_client.get(change_url)
    data = page_data(page)
    data["read_timeout"] = "9.5"
    response = staff_client.post(change_url, data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    row.refresh_from_db()
    assert row.read_timeout == 9.5
    assert row.history.count() == 2
    assert row.history.first().history_user.username == "ops"

    first = row.history.earliest()
    revert_url = reverse("admin:resilience_upstream_simple_history", args=[row.pk, first.history_id])
    page = staff_client.get(revert_url)
    assert page.status_code == 200 and "Revert" in page.content.decode()
    assert staff_client.post(revert_url, page_data(page)).status_code == 302
    row.refresh_from_db()
    assert row.read_timeout == 5.0
    assert row.history.count() == 3


def test_list_shows_live_breaker_state_and_error_rate(staff_client, fake, make_upstream):
    make_upstream(retry_total=0, breaker_fail_max=2)
    fake.script("/x", Reply(500))
    for _ in range(2):
        with pytest.raises(errors.UpstreamHTTPError):
            upstream("api").get("/x")
    page = staff_client.get(reverse("admin:resilience_upstream_changelist")).content.decode()
    assert ">open</b>" in page
    assert "100.0%" in page  # error rate, from the rollups
    assert '<td class="field-log_sampling">all</td>' in page


def test_actions_reset_breaker_clear_cache_and_probe(staff_client, fake, make_upstream):
    row = make_upstream(retry_total=0, breaker_fail_max=1, cache_ttl=60, health_path="/health")
    upstream("api").get("/cached")
    fake.script("/x", Reply(500))
    with pytest.raises(errors.UpstreamHTTPError):
        upstream("api").get("/x")
    assert upstream("api").breaker.status()["state"] == "open"
    changelist = reverse("admin:resilience_upstream_changelist")

    staff_client.post(changelist, {"action": "reset_breaker", "_selected_action": [row.pk]})
    assert upstream("api").breaker.status()["state"] == "closed"

    response = staff_client.post(changelist, {"action": "clear_cache", "_selected_action": [row.pk]},
                                 follow=True)
    assert "Removed 1 cached response" in response.content.decode()
    assert not upstream("api").get("/cached").from_cache

    response = staff_client.post(changelist, {"action": "probe_now", "_selected_action": [row.pk]},
                                 follow=True)
    shown = [str(m) for m in response.context["messages"]]
    assert any(m.startswith("api: 200 in") for m in shown), shown
    assert fake.count("/health") == 1


def test_call_log_admin_is_read_only(staff_client, fake, make_upstream):
    make_upstream()
    upstream("api").get("/a")
    from resilience.telemetry.calllog import call_log_flush

    call_log_flush()
    page = staff_client.get(reverse("admin:resilience_calllog_changelist") + "?outcome=ok")
    assert page.status_code == 200 and "/a" in page.content.decode()
    # The list says that it holds a sample of the successes, and at what rate.
    assert "successful calls are sampled per upstream (api: all)" in " ".join(page.content.decode().split())
    assert staff_client.get(reverse("admin:resilience_calllog_add")).status_code == 403


def test_recovery_and_fallback_model_fields_are_edited_with_history(staff_client, make_upstream):
    row = make_upstream()
    change_url = reverse("admin:resilience_upstream_change", args=[row.pk])
    page = staff_client.get(change_url)
    html = page.content.decode()
    assert "breaker_probe_interval" in html and "context_fallback_model" in html
    assert "content_policy_fallback_model" in html
    data = page_data(page)
    data.update(breaker_probe_interval="0.5", context_fallback_model="gpt-long",
                content_policy_fallback_model="gpt-lenient", change_reason="bigger context")
    response = staff_client.post(change_url, data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    upstream_row = Upstream.objects.get(pk=row.pk)
    assert (upstream_row.breaker_probe_interval, upstream_row.context_fallback_model,
            upstream_row.content_policy_fallback_model) == (0.5, "gpt-long", "gpt-lenient")
    latest = upstream_row.history.first()
    assert latest.context_fallback_model == "gpt-long" and latest.history_change_reason == "bigger context"
    policy = upstream(row.name).policy  # reaches the client
    assert (policy.breaker_probe_interval, policy.context_fallback_model) == (0.5, "gpt-long")


def test_endpoint_limits_are_edited_inline_with_history_and_reach_the_pool(staff_client, make_upstream):
    from resilience.models import Endpoint

    row = make_upstream()
    change_url = reverse("admin:resilience_upstream_change", args=[row.pk])
    data = page_data(staff_client.get(change_url))
    data.update({"endpoints-TOTAL_FORMS": "1", "endpoints-0-name": "account",
                 "endpoints-0-base_url": row.base_url, "endpoints-0-weight": "1", "endpoints-0-priority": "0",
                 "endpoints-0-enabled": "on",
                 "endpoints-0-rpm_limit": "0", "endpoints-0-tpm_limit": ""})
    page = staff_client.post(change_url, data)
    assert page.status_code == 200
    assert "Ensure this value is greater than or equal to 1" in page.content.decode()
    data["endpoints-0-rpm_limit"] = "300"
    response = staff_client.post(change_url, data)
    assert response.status_code == 302
    endpoint = Endpoint.objects.get(upstream=row, name="account")
    assert (endpoint.rpm_limit, endpoint.tpm_limit) == (300, None)
    assert endpoint.history.latest().rpm_limit == 300
    quota = upstream(row.name)._live.current().pool.members[0].quota
    assert (quota.rpm, quota.tpm, quota.active) == (300, 0, True)
