"""Credentials stay where they belong (issue 23, H2): a policy names only a
variable declared as an upstream credential, never one of the deploy's own;
a row saved before the rule sends nothing; binding a credential to an origin
needs `resilience.change_credentials`, in the admin and in the API, and the
history says who did it."""
from __future__ import annotations

import pytest
from django.conf import settings as django_settings
from django.contrib.auth.models import Permission
from django.core.exceptions import ValidationError
from django.urls import reverse
from rest_framework.test import APIClient

from aigen.edge.tokens import token_issue
from project.environment import CredentialVariables
from resilience import exceptions as errors
from resilience import upstream
from resilience.advisor.models import Suggestion
from resilience.client import reset_clients
from resilience.models import Endpoint, Upstream
from tests.resilience.test_admin import page_data

pytestmark = pytest.mark.django_db

SECRET = "sk-upstream-credential-5Hq2"
DEPLOY = ("SECRET_KEY", "DATABASE_URL", "REDIS_URL", "CREDENTIALS_KEYS", "METRICS_TOKEN",
          "DJANGO_SUPERUSER_PASSWORD", "PGPASSWORD", "CACHE_KEY_PREFIX", "AI_MODEL")


# -- which variables a policy may name ---------------------------------------------------------
def test_the_deploy_variables_are_what_the_settings_read():
    read = django_settings.RESILIENCE["DEPLOY_VARIABLES"]
    assert {"SECRET_KEY", "DATABASE_URL", "REDIS_URL", "METRICS_TOKEN", "AI_MODEL", "DEBUG",
            "UPSTREAM_CREDENTIAL_PREFIX"} <= set(read)
    # Read as a credential by the settings: declared, not the deploy's own.
    assert "OPENAI_API_KEY" not in read
    assert "OPENAI_API_KEY" in django_settings.RESILIENCE["CREDENTIAL_VARIABLES"]
    assert django_settings.RESILIENCE["CREDENTIAL_PREFIX"] == "UPSTREAM_"


@pytest.mark.parametrize("name", DEPLOY)
def test_the_deploy_variables_are_refused_on_upstreams_and_endpoints(name, settings):
    # Refused whatever is declared: listed by name, and with no prefix at all.
    settings.RESILIENCE = {**settings.RESILIENCE, "CREDENTIAL_VARIABLES": [name], "CREDENTIAL_PREFIX": ""}
    row = Upstream(name="x", base_url="https://api.example.com", auth_kind="header", auth_name="X-Key",
                   auth_env_var=name)
    with pytest.raises(ValidationError) as caught:
        row.full_clean()
    assert "deployment's own variables" in str(caught.value.message_dict["auth_env_var"])
    row.auth_env_var = "UPSTREAM_OK"
    row.save()
    endpoint = Endpoint(upstream=row, name="e", base_url="https://api.example.com", auth_env_var=name)
    with pytest.raises(ValidationError) as caught:
        endpoint.full_clean()
    assert name in str(caught.value.message_dict["auth_env_var"])


def test_only_declared_variables_may_be_named(settings):
    row = Upstream(name="x", base_url="https://api.example.com", auth_kind="bearer",
                   auth_env_var="GITHUB_TOKEN")
    with pytest.raises(ValidationError) as caught:
        row.full_clean()
    assert "not declared as an upstream credential" in str(caught.value.message_dict["auth_env_var"])
    for declared in ("UPSTREAM_GITHUB_TOKEN", "OPENAI_API_KEY"):  # by prefix; by the default list
        row.auth_env_var = declared
        row.full_clean()
    settings.RESILIENCE = {**settings.RESILIENCE, "CREDENTIAL_VARIABLES": ["GITHUB_TOKEN"],
                           "CREDENTIAL_PREFIX": "PARTNER_"}
    row.auth_env_var = "GITHUB_TOKEN"
    row.full_clean()
    row.auth_env_var = "UPSTREAM_GITHUB_TOKEN"  # the prefix moved
    with pytest.raises(ValidationError):
        row.full_clean()


def test_the_client_is_handed_only_declared_variables(monkeypatch):
    monkeypatch.setenv("UPSTREAM_LATE_KEY", "late")  # set after start: seen (a live view)
    monkeypatch.setenv("GITHUB_TOKEN", "undeclared")
    secrets = django_settings.RESILIENCE["SECRETS"]
    assert secrets.get("UPSTREAM_LATE_KEY") == "late"
    for name in ("GITHUB_TOKEN", "SECRET_KEY", "PATH"):
        assert secrets.get(name) is None and name not in secrets
    assert "UPSTREAM_LATE_KEY" in set(secrets)
    assert all(name.startswith("UPSTREAM_") or name == "OPENAI_API_KEY" for name in secrets)
    # Declared by name or not, a variable the settings read is never handed out.
    view = CredentialVariables({"SECRET_KEY": "k", "UPSTREAM_A": "a"}, prefix="", names=frozenset(
        {"SECRET_KEY", "UPSTREAM_A"}), refused={"SECRET_KEY"})
    assert dict(view) == {"UPSTREAM_A": "a"} and "SECRET_KEY" not in repr(view.get("SECRET_KEY"))


# -- a row saved before the rule sends nothing ---------------------------------------------------
def test_a_stored_row_naming_a_refused_variable_sends_nothing(fake, settings, monkeypatch):
    monkeypatch.setenv("SECRET_KEY", "the-django-secret-never-sent")
    settings.RESILIENCE = {**settings.RESILIENCE, "SECRETS": {"SECRET_KEY": "the-django-secret-never-sent"}}
    # Saved without full_clean, as a row from before this rule would be.
    Upstream.objects.create(name="old", base_url=fake.url, auth_kind="header", auth_name="X-Key",
                            auth_env_var="SECRET_KEY", retry_total=0)
    reset_clients()
    with pytest.raises(errors.CredentialRefused) as caught:
        upstream("old").get("/x")
    assert "SECRET_KEY" in caught.value.message and "never-sent" not in str(caught.value.as_dict())
    assert caught.value.as_dict()["code"] == "credential_refused"
    assert fake.requests == []


def test_an_endpoint_naming_a_refused_variable_gets_no_call(fake, settings):
    from tests.support.fake_upstream import FakeUpstream

    settings.RESILIENCE = {**settings.RESILIENCE, "SECRETS": {"UPSTREAM_GOOD": "good-key",
                                                              "DATABASE_URL": "postgres://u:pw@db/x"}}
    with FakeUpstream() as other:
        row = Upstream.objects.create(name="pool", base_url=fake.url, auth_kind="bearer",
                                      auth_env_var="UPSTREAM_GOOD", endpoint_strategy="priority",
                                      retry_total=0)
        Endpoint.objects.create(upstream=row, name="stolen", base_url=other.url, priority=0,
                                auth_env_var="DATABASE_URL")
        Endpoint.objects.create(upstream=row, name="good", base_url=fake.url, priority=1)
        reset_clients()
        assert upstream("pool").get("/x").status_code == 200
        assert other.requests == []
    assert fake.requests[0].headers["Authorization"] == "Bearer good-key"


def test_a_starting_server_names_every_stored_row_that_sends_nothing(caplog):
    from project.startup import announce

    row = Upstream.objects.create(name="github", base_url="https://api.github.com", auth_kind="bearer",
                                  auth_env_var="GITHUB_TOKEN")
    Endpoint.objects.create(upstream=row, name="mirror", base_url="https://m.example",
                            auth_env_var="DATABASE_URL")
    Upstream.objects.create(name="fine", base_url="https://x.example", auth_kind="bearer",
                            auth_env_var="UPSTREAM_FINE")
    with caplog.at_level("INFO"):
        announce()
    refused = [r.getMessage() for r in caplog.records if "credential refused" in r.getMessage()]
    assert len(refused) == 2
    assert "upstream 'github': GITHUB_TOKEN is not declared" in refused[0]
    assert "endpoint github/mirror: DATABASE_URL is one of the deployment's own" in refused[1]


def test_the_probe_api_names_the_refused_variable(fake, settings, django_user_model):
    Upstream.objects.create(name="old", base_url=fake.url, auth_kind="bearer", auth_env_var="REDIS_URL")
    reset_clients()
    staff = django_user_model.objects.create_superuser("root", "r@example.com", "pw")
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {token_issue(user=staff)}")
    probe = api.post("/api/resilience/upstreams/old/probe").json()["probe"]
    assert probe["ok"] is False and probe["error"]["code"] == "credential_refused"
    assert "REDIS_URL" in probe["error"]["message"]
    assert fake.requests == []


# -- binding a credential to an origin needs change_credentials ---------------------------------
def _staff(django_user_model, name: str, *codenames: str):
    user = django_user_model.objects.create_user(name, f"{name}@example.com", "pw-123", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    return django_user_model.objects.get(pk=user.pk)  # fresh permission cache


EDITOR = ("view_upstream", "change_upstream", "add_upstream", "view_endpoint", "add_endpoint",
          "change_endpoint")


@pytest.fixture
def keyed(db):
    row = Upstream(name="keyed", base_url="https://api.partner.example/v1", auth_kind="bearer",
                   auth_env_var="UPSTREAM_PARTNER_KEY")
    row.full_clean()
    row.save()
    return row


def _post_change(client, row, **changes):
    url = reverse("admin:resilience_upstream_change", args=[row.pk])
    data = page_data(client.get(url))
    data.update(changes)
    return client.post(url, data)


@pytest.mark.parametrize("change", [
    {"base_url": "https://attacker.example/v1"},          # another host
    {"base_url": "http://api.partner.example/v1"},        # another scheme
    {"base_url": "https://api.partner.example:8443/v1"},  # another port
    {"auth_env_var": "UPSTREAM_OTHER_KEY"},               # another secret to the same origin
])
def test_the_admin_refuses_moving_a_credential_without_the_permission(change, client, keyed,
                                                                       django_user_model):
    client.force_login(_staff(django_user_model, "editor", "change_upstream"))
    response = _post_change(client, keyed, **change)
    assert response.status_code == 200
    assert "change_credentials" in str(response.context["adminform"].form.non_field_errors())
    keyed.refresh_from_db()
    assert (keyed.base_url, keyed.auth_env_var) == ("https://api.partner.example/v1", "UPSTREAM_PARTNER_KEY")
    assert keyed.history.count() == 1


def test_the_admin_allows_what_keeps_the_credential_where_it_was(client, keyed, django_user_model):
    client.force_login(_staff(django_user_model, "editor", *EDITOR))
    # Another path on the same origin (port spelt out), then dropping the credential.
    assert _post_change(client, keyed, base_url="https://API.partner.example:443/v2").status_code == 302
    assert _post_change(client, keyed, auth_kind="none", auth_env_var="").status_code == 302
    keyed.refresh_from_db()
    assert keyed.auth_kind == "none"
    # Once without a credential, its origin is free to change; adding one back is not.
    assert _post_change(client, keyed, base_url="https://elsewhere.example").status_code == 302
    response = _post_change(client, keyed, auth_kind="bearer", auth_env_var="UPSTREAM_PARTNER_KEY")
    assert response.status_code == 200 and "change_credentials" in response.content.decode()


def test_the_admin_refuses_adding_an_upstream_with_a_credential(client, django_user_model):
    client.force_login(_staff(django_user_model, "editor", *EDITOR))
    url = reverse("admin:resilience_upstream_add")
    data = page_data(client.get(url))
    data.update(name="new", base_url="https://attacker.example", auth_kind="bearer",
                auth_env_var="OPENAI_API_KEY")
    response = client.post(url, data)
    assert response.status_code == 200 and not Upstream.objects.filter(name="new").exists()
    data.update(auth_kind="none", auth_env_var="")
    assert client.post(url, data).status_code == 302


def test_with_the_permission_the_move_is_saved_and_history_names_who(client, keyed, django_user_model):
    user = _staff(django_user_model, "keeper", *EDITOR, "change_credentials")
    client.force_login(user)
    response = _post_change(client, keyed, base_url="https://api.new-partner.example/v1",
                            change_reason="partner moved")
    assert response.status_code == 302
    keyed.refresh_from_db()
    assert keyed.base_url == "https://api.new-partner.example/v1"
    record = keyed.history.latest()
    assert record.history_user == user
    assert record.history_change_reason == (
        "credential UPSTREAM_PARTNER_KEY bound to https://api.new-partner.example:443; partner moved")


def test_an_endpoint_added_inline_inherits_the_credential_so_it_needs_the_permission(
        client, keyed, django_user_model):
    url = reverse("admin:resilience_upstream_change", args=[keyed.pk])
    for name, codenames, allowed in (("editor", EDITOR, False),
                                     ("keeper", (*EDITOR, "change_credentials"), True)):
        user = _staff(django_user_model, name, *codenames)
        client.force_login(user)
        data = page_data(client.get(url))
        data.update({"endpoints-TOTAL_FORMS": "1", "endpoints-0-name": "side",
                     "endpoints-0-base_url": "https://attacker.example", "endpoints-0-weight": "1",
                     "endpoints-0-priority": "0", "endpoints-0-enabled": "on"})
        response = client.post(url, data)
        assert (response.status_code == 302) is allowed
        assert Endpoint.objects.filter(name="side").exists() is allowed
    endpoint = Endpoint.objects.get(name="side")
    assert endpoint.history.latest().history_user == user
    assert "bound to https://attacker.example:443" in endpoint.history.latest().history_change_reason


def test_the_endpoint_page_and_a_history_revert_are_held_to_the_same_rule(client, keyed, django_user_model):
    endpoint = Endpoint(upstream=keyed, name="main", base_url="https://api.partner.example")
    endpoint.full_clean()
    endpoint.save()
    client.force_login(_staff(django_user_model, "editor", *EDITOR, "change_credentials"))
    url = reverse("admin:resilience_endpoint_change", args=[endpoint.pk])
    data = page_data(client.get(url))
    data["base_url"] = "https://old-partner.example"
    assert client.post(url, data).status_code == 302  # allowed: a history version to revert to later
    data["base_url"] = "https://api.partner.example"
    assert client.post(url, data).status_code == 302
    old = endpoint.history.order_by("history_id")[1]  # at old-partner.example

    client.force_login(_staff(django_user_model, "plain", *EDITOR))
    data["base_url"] = "https://attacker.example"
    assert client.post(url, data).status_code == 200
    revert = reverse("admin:resilience_endpoint_simple_history", args=[endpoint.pk, old.history_id])
    response = client.post(revert, page_data(client.get(revert)))
    assert response.status_code == 200 and "change_credentials" in response.content.decode()
    endpoint.refresh_from_db()
    assert endpoint.base_url == "https://api.partner.example"


def test_the_api_holds_policy_writes_to_the_same_rule(keyed, django_user_model):
    suggestion = Suggestion.objects.create(upstream="keyed", kind="test", field="base_url",
                                           from_value=keyed.base_url, to_value="https://attacker.example")
    api = APIClient()
    # Applying takes change_suggestion too (resilience.ops.permissions); the credential rule comes on top.
    deciding = (*EDITOR, "view_suggestion", "change_suggestion")
    for name, codenames, status in (("editor", deciding, 403),
                                    ("keeper", (*deciding, "change_credentials"), 200)):
        user = _staff(django_user_model, name, *codenames)
        api.credentials(HTTP_AUTHORIZATION=f"Bearer {token_issue(user=user)}")
        response = api.post(f"/api/resilience/suggestions/{suggestion.pk}/apply")
        assert response.status_code == status, response.content
        if status == 403:
            assert response.json()["error"]["code"] == "credential_change_forbidden"
            keyed.refresh_from_db()
            assert keyed.base_url == "https://api.partner.example/v1"
    keyed.refresh_from_db()
    assert keyed.base_url == "https://attacker.example"
    assert keyed.history.latest().history_user == user
