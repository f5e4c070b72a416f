"""Permissions match the admin's (issue 23, M2, L8, L10): a matrix of roles x
every write route under /api/resilience/ (and DELETE /api/ai/cache) and every
read of policies, call logs and findings, refused or allowed as the admin
would; the admin's own buttons and actions agree, the dead-letter requeue
included. Real HTTP handling, real tokens, the real fake upstream."""
from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse

from resilience import upstream
from resilience.client.context import caller_bound
from resilience.jobs.models import Job
from resilience.ops.permissions import admin_allows
from resilience.telemetry.calllog import call_log_flush
from tests.support.roles import ROLES, api_client, grant, role_user

pytestmark = pytest.mark.django_db

API = "/api/resilience"
NO_SUGGESTION = 999_999  # past the permission check, the answer is a 404 suggestion_not_found
#: (method, path, body, permissions needed): every write.
WRITES = [
    ("post", f"{API}/upstreams/api/breaker/reset", None, {"change_upstream"}),
    ("post", f"{API}/upstreams/api/probe", None, {"change_upstream"}),
    ("delete", f"{API}/upstreams/api/cache", None, {"change_upstream"}),
    ("post", f"{API}/benchmarks", {"upstream": "api", "requests": 1, "concurrency": 1}, {"change_upstream"}),
    ("post", f"{API}/suggestions/{NO_SUGGESTION}/apply", None, {"change_suggestion", "change_upstream"}),
    ("post", f"{API}/suggestions/{NO_SUGGESTION}/rollback", None, {"change_suggestion", "change_upstream"}),
    ("post", f"{API}/suggestions/{NO_SUGGESTION}/dismiss", None, {"change_suggestion"}),
    ("delete", "/api/ai/cache", None, {"change_upstream"}),
]
#: Reads of policies, call logs, findings and jobs: view permissions.
READS = [
    ("get", f"{API}/upstreams", None, {"view_upstream"}),
    ("get", f"{API}/upstreams/api", None, {"view_upstream"}),
    ("get", f"{API}/findings", None, {"view_suggestion"}),
    ("get", f"{API}/upstreams/api/findings", None, {"view_suggestion"}),
    ("get", f"{API}/benchmarks/00000000-0000-0000-0000-000000000000", None, {"view_job"}),
    ("get", f"{API}/upstreams/api/dashboard", None, {"view_upstream", "view_calllog"}),
]
#: What each role holds (tests/support/roles.py).
HELD = {"anonymous": None, "user": set(), "staff": set(),
        "viewer": {f"view_{m}" for m in ("upstream", "calllog", "suggestion", "job", "deadletter")},
        "operator": {f"{v}_{m}" for m in ("upstream", "calllog", "suggestion", "job", "deadletter")
                     for v in ("view", "change")}}


def expected(role: str, needs: set[str]) -> str:
    if role == "anonymous":
        return "401"
    if role == "user" or not needs <= HELD[role]:  # the admin lets no non-staff user in
        return "403"
    return "allowed"


def outcome(response) -> str:
    body = response.json()
    if response.status_code == 401:
        assert body["error"]["code"] == "not_authenticated"
        return "401"
    if response.status_code == 403:
        assert body["error"]["code"] == "permission_denied"
        return "403"
    assert response.status_code in (200, 202, 404), response.content  # 404: no such suggestion / job
    return "allowed"


@pytest.fixture
def upstream_api(make_upstream, fake):
    return make_upstream(health_path="/health")


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(("method", "path", "body", "needs"), WRITES + READS,
                         ids=[f"{m} {p}" for m, p, _, _ in WRITES + READS])
def test_the_matrix_of_roles_and_routes(upstream_api, fake, role, method, path, body, needs):
    client = api_client(role)
    response = getattr(client, method)(path, body, format="json")
    assert outcome(response) == expected(role, needs), (role, method, path)
    if expected(role, needs) != "allowed":
        assert fake.count("/health") == 0  # a refused probe never ran


def test_applying_a_suggestion_needs_change_on_upstreams_too(upstream_api):
    """Dismissing is a decision about a suggestion; applying and rolling back change a policy."""
    decider = grant(role_user("staff", username="decider"), "view_suggestion", "change_suggestion")
    client = api_client(decider)
    assert outcome(client.post(f"{API}/suggestions/{NO_SUGGESTION}/dismiss")) == "allowed"
    assert outcome(client.post(f"{API}/suggestions/{NO_SUGGESTION}/apply")) == "403"
    assert outcome(client.post(f"{API}/suggestions/{NO_SUGGESTION}/rollback")) == "403"


def test_a_non_staff_user_with_permissions_is_still_refused(upstream_api):
    """As in the admin, which lets no non-staff user in."""
    user = grant(role_user("user"), "view_upstream", "change_upstream")
    assert user.has_perm("resilience.change_upstream")
    assert not admin_allows(user, "resilience.change_upstream")
    assert outcome(api_client(user).post(f"{API}/upstreams/api/breaker/reset")) == "403"


@pytest.mark.parametrize("role", ROLES)
def test_call_logs_show_everything_with_view_permission_else_the_callers_own(upstream_api, role):
    """L10: a caller without view_calllog sees only the calls made for it."""
    user = role_user(role)
    other = role_user("user", username="other")
    for caller in ([user.pk] if user else []) + [other.pk, None]:
        with caller_bound(caller):
            upstream("api").get(f"/for/{caller}")
    call_log_flush()
    response = api_client(user).get(f"{API}/upstreams/api/calls")
    if user is None:
        assert outcome(response) == "401"
        return
    paths = sorted(row["path"] for row in response.json()["results"])
    if role in ("viewer", "operator"):
        assert paths == sorted([f"/for/{user.pk}", f"/for/{other.pk}", "/for/None"])
    else:
        assert paths == [f"/for/{user.pk}"]


def test_cache_statistics_stay_open_to_any_caller(upstream_api):
    assert outcome(api_client("user").get(f"{API}/cache/stats")) == "allowed"


# -- the admin agrees ----------------------------------------------------------------------------
BUTTONS = {"reset-breaker": "breaker/reset", "probe": "probe", "clear-cache": "cache"}


@pytest.mark.parametrize("role", ["user", "staff", "viewer", "operator"])
@pytest.mark.parametrize("button", BUTTONS)
def test_the_admin_buttons_and_the_api_refuse_the_same_users(upstream_api, fake, role, button):
    user = role_user(role)
    admin = Client()
    admin.force_login(user)
    name = f"admin:resilience_upstream_{button.replace('-', '_')}"
    answer = admin.post(reverse(name, args=[upstream_api.pk]))
    admin_allowed = answer.status_code == 302 and answer["Location"].endswith(
        reverse("admin:resilience_upstream_change", args=[upstream_api.pk]))
    assert answer.status_code in (302, 403)
    api = api_client(user)
    path = f"{API}/upstreams/api/{BUTTONS[button]}"
    response = api.delete(path) if button == "clear-cache" else api.post(path)
    assert (outcome(response) == "allowed") is admin_allowed is (role == "operator")


def _action_names(client: Client, url: str) -> set[str]:
    page = client.get(url)
    assert page.status_code == 200
    form = page.context["action_form"]  # None when no action is left for this user
    return set() if form is None else {name for name, _ in form.fields["action"].choices if name}


@pytest.mark.parametrize(("role", "shown"), [("viewer", set()),
                                             ("operator", {"reset_breaker", "clear_cache", "probe_now"})])
def test_upstream_admin_actions_need_change_permission(upstream_api, fake, role, shown):
    admin = Client()
    admin.force_login(role_user(role))
    changelist = reverse("admin:resilience_upstream_changelist")
    assert _action_names(admin, changelist) & {"reset_breaker", "clear_cache", "probe_now"} == shown
    admin.post(changelist, {"action": "probe_now", "_selected_action": [upstream_api.pk]})
    assert fake.count("/health") == (1 if shown else 0)  # posted anyway: nothing ran for the viewer


@pytest.mark.parametrize(("role", "shown"), [("viewer", set()),
                                             ("operator", {"apply", "dismiss", "rollback"})])
def test_suggestion_admin_actions_need_change_permissions(role, shown):
    admin = Client()
    admin.force_login(role_user(role))
    assert _action_names(admin, reverse("admin:resilience_suggestion_changelist")) == shown


@pytest.fixture
def dead_letter() -> Job:
    return Job.objects.create(name="tests.support.jobs.add", args={"a": 1, "b": 2},
                              status=Job.Status.FAILED, attempts=3, max_attempts=3)


@pytest.mark.parametrize(("perms", "requeued"), [
    ({"view_deadletter"}, False),                      # L8: view only, once enough to requeue
    ({"view_deadletter", "change_deadletter"}, True),
])
def test_requeueing_a_dead_letter_needs_change_permission_on_dead_letters(dead_letter, perms, requeued):
    user = grant(role_user("staff"), *perms)
    admin = Client()
    admin.force_login(user)
    changelist = reverse("admin:resilience_deadletter_changelist")
    assert ("requeue" in _action_names(admin, changelist)) is requeued
    admin.post(changelist, {"action": "requeue", "_selected_action": [str(dead_letter.pk)]})
    dead_letter.refresh_from_db()
    assert (dead_letter.status == Job.Status.QUEUED) is requeued


def test_superusers_pass_everywhere(upstream_api):
    root = get_user_model().objects.create_superuser("root", "root@example.com", "pw-root-123")
    client = api_client(root)
    assert outcome(client.post(f"{API}/upstreams/api/breaker/reset")) == "allowed"
    assert upstream("api").breaker is None or upstream("api").breaker.status()["state"] == "closed"


def test_a_permission_taken_away_applies_to_the_next_request_of_a_kept_token(upstream_api):
    """Tokens keep their user in process (aigen.edge.tokens); permissions are not kept with it."""
    operator = role_user("operator")
    client = api_client(operator)
    assert outcome(client.post(f"{API}/upstreams/api/breaker/reset")) == "allowed"
    operator.user_permissions.remove(Permission.objects.get(codename="change_upstream"))
    assert outcome(client.post(f"{API}/upstreams/api/breaker/reset")) == "403"


@pytest.mark.parametrize(("role", "status"), [
    ("user", 302), ("staff", 403), ("viewer", 200), ("operator", 200)])
@pytest.mark.parametrize("path", ["/dashboard/", "/dashboard/data", "/dashboard/upstreams/api"])
def test_the_dashboards_ask_the_same_view_permissions(upstream_api, role, status, path):
    """They show policies, statistics and call-log failures: view_upstream and view_calllog."""
    page = Client()
    page.force_login(role_user(role))
    assert page.get(path).status_code == status
