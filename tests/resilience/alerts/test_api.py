"""The alerts' API (firing alerts, silences with their permission), the
Prometheus export and the commands."""
from __future__ import annotations

from io import StringIO

import pytest
import yaml
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.management import call_command
from rest_framework.test import APIClient

from aigen.edge.tokens import token_issue
from resilience.alerts.models import Alert, AlertRule, Silence
from resilience.alerts.services import alert_rules_seed

pytestmark = pytest.mark.django_db
API = "/api/resilience/alerts"


def client_for(name: str, *, staff: bool = False, perms: tuple[str, ...] = ()) -> APIClient:
    user = get_user_model().objects.create_user(username=name, is_staff=staff)
    user.user_permissions.add(*Permission.objects.filter(codename__in=perms))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token_issue(user=user)}")
    return client


@pytest.fixture
def firing():
    alert_rules_seed()
    critical = AlertRule.objects.get(name="success-rate-critical")
    warning = AlertRule.objects.get(name="success-rate-warning")
    Alert.objects.create(rule=warning, subject="llm", state="firing", value=70.0)
    Alert.objects.create(rule=critical, subject="llm", state="firing", value=70.0)
    Alert.objects.create(rule=critical, subject="other", state="pending", value=75.0)
    return critical


def test_firing_alerts_most_severe_first_and_pending_on_request(firing):
    assert client_for("plain", perms=("view_alert",)).get(API).status_code == 403  # not staff
    assert client_for("staff-only", staff=True).get(API).status_code == 403  # no view_alert
    client = client_for("reader", staff=True, perms=("view_alert",))
    body = client.get(API).json()
    assert [(a["rule"], a["subject"], a["severity"]) for a in body["alerts"]] == [
        ("success-rate-critical", "llm", "critical"), ("success-rate-warning", "llm", "warning")]
    assert body["alerts"][0]["condition"] == "success_rate < 80"
    assert len(client.get(API, {"state": "all"}).json()["alerts"]) == 3
    response = client.get(API, {"state": "bogus"})
    assert response.status_code == 400 and response.json()["error"]["field"] == "state"
    assert APIClient().get(API).status_code == 401


def test_silences_need_the_permission_and_name_bad_fields(firing):
    plain_staff = client_for("staffer", staff=True, perms=("view_alert",))
    body = {"rule": "success-rate-critical", "subject": "llm", "seconds": 3600, "comment": "deploy"}
    response = plain_staff.post(f"{API}/silences", body, format="json")
    assert response.status_code == 403 and response.json()["error"]["code"] == "permission_denied"

    operator = client_for("oncall", staff=True, perms=("add_silence", "view_alert"))
    response = operator.post(f"{API}/silences", body, format="json")
    assert response.status_code == 201, response.content
    silence = response.json()["silence"]
    assert (silence["rule"], silence["subject"], silence["created_by"]) == (
        "success-rate-critical", "llm", "oncall")
    assert [s["id"] for s in plain_staff.get(f"{API}/silences").json()["silences"]] == [silence["id"]]

    response = operator.post(f"{API}/silences", {**body, "rule": "no-such-rule"}, format="json")
    assert response.status_code == 400 and response.json()["error"]["field"] == "rule"
    response = operator.post(f"{API}/silences", {**body, "seconds": 5}, format="json")
    assert response.status_code == 400 and response.json()["error"]["field"] == "seconds"

    ended = operator.post(f"{API}/silences/{silence['id']}/end").json()["silence"]
    assert ended["ends_at"] <= Silence.objects.get().ends_at.isoformat().replace("+00:00", "Z")
    assert operator.get(f"{API}/silences").json()["silences"] == []
    assert operator.post(f"{API}/silences/999999/end").status_code == 404


def test_the_prometheus_export_has_every_enabled_rule_with_its_condition(firing, tmp_path):
    AlertRule.objects.filter(name="latency-p95-slow").update(enabled=False)
    AlertRule.objects.create(name="queue-high-deep", metric="queue_depth", scope="queue", target="high",
                             op=">", threshold=50, for_seconds=300, severity="warning")
    path = tmp_path / "rules.yml"
    call_command("alerts_export", "--prometheus", "--output", str(path), stdout=StringIO())
    [group] = yaml.safe_load(path.read_text())["groups"]
    rules = {rule["alert"]: rule for rule in group["rules"]}
    assert "latency-p95-slow" not in rules
    assert set(rules) >= {"success-rate-warning", "success-rate-critical", "breaker-open",
                          "all-endpoints-down"}
    warning = rules["success-rate-warning"]
    assert warning["for"] == "60s" and warning["labels"]["severity"] == "warning"
    assert warning["expr"].startswith(
        "(100 - 100 * (sum by (upstream) (rate(resilience_upstream_calls_total{outcome=~")
    assert ") < 90 and on (upstream)" in warning["expr"]
    assert rules["queue-high-deep"]["expr"] == 'resilience_jobs_queue_depth{queue="high"} > 50'
    assert rules["account-needs-new-token"]["expr"] == (
        "max by (upstream, endpoint) (resilience_account_needs_new_token{}) > 0")
    assert rules["account-refresh-failing"]["expr"].startswith(
        "(max by (upstream, endpoint) (clamp_max(resilience_account_refresh_failures{}, 1)) * on ")


def test_alerts_evaluate_lists_what_fires(firing):
    out = StringIO()
    call_command("alerts_evaluate", stdout=out)
    # No traffic in the rollups: every success-rate alert resolves.
    assert "success-rate-critical [llm]: firing -> resolved (value None)" in out.getvalue()
    assert out.getvalue().rstrip().endswith("0 alert(s) firing")


def test_the_dashboard_shows_the_alerts_firing(firing, client, django_user_model):
    from django.contrib.auth.models import Permission

    watcher = django_user_model.objects.create_user("watcher", is_staff=True)
    # The dashboard asks what its data shows (resilience.ops.permissions.DASHBOARD_READ).
    watcher.user_permissions.set(Permission.objects.filter(
        content_type__app_label="resilience", codename__in=("view_upstream", "view_calllog", "view_alert")))
    client.force_login(watcher)
    page = client.get("/dashboard/").content.decode()
    assert 'id="rs-alerts"' in page and "Alerts firing: <span data-field=\"alerts_count\">2</span>" in page
    assert "<td>success-rate-critical</td><td>llm</td><td>success_rate &lt; 80</td>" in page
    data = client.get("/dashboard/data").json()
    assert [(a["rule"], a["subject"], a["severity"]) for a in data["alerts"]] == [
        ("success-rate-critical", "llm", "critical"), ("success-rate-warning", "llm", "warning")]
