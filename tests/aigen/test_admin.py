"""The aigen admin: an API token's limits and priority are edited with
`change_apitoken` and logged; prices are editable; the ledger is read-only."""
from __future__ import annotations

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client

from aigen.edge.tokens import token_issue
from aigen.models import ApiToken, ModelPrice

pytestmark = pytest.mark.django_db


def staff_client(*codenames: str) -> Client:
    user = get_user_model().objects.create_user("staff", is_staff=True)
    granted = Permission.objects.filter(content_type__app_label="aigen", codename__in=codenames)
    user.user_permissions.add(*granted)
    client = Client()
    client.force_login(user)
    return client


LIMITS = {"priority": "low", "rpm_limit": "30", "token_budget": "1000000", "budget_period": "month"}


def test_a_tokens_limits_are_edited_with_change_permission_and_logged():
    team = get_user_model().objects.create_user("team")
    token_issue(user=team)
    token = ApiToken.objects.get(user=team)
    url = f"/admin/aigen/apitoken/{token.pk}/change/"
    assert staff_client("view_apitoken", "change_apitoken").post(url, LIMITS).status_code == 302
    token.refresh_from_db()
    assert (token.priority, token.rpm_limit, token.token_budget, token.budget_period) == (
        "low", 30, 1_000_000, "month")
    assert LogEntry.objects.filter(object_id=str(token.pk)).exists()


def test_viewing_alone_changes_nothing():
    team = get_user_model().objects.create_user("team")
    token_issue(user=team)
    token = ApiToken.objects.get(user=team)
    response = staff_client("view_apitoken").post(f"/admin/aigen/apitoken/{token.pk}/change/", LIMITS)
    assert response.status_code == 403
    token.refresh_from_db()
    assert token.rpm_limit is None


def test_prices_are_editable_and_the_ledger_is_read_only():
    client = staff_client("add_modelprice", "view_modelprice", "view_usageledger", "add_usageledger")
    response = client.post("/admin/aigen/modelprice/add/", {"model": "gpt-x", "input": "2.5",
                                                            "cached_input": "1.25", "output": "10"})
    assert response.status_code == 302 and ModelPrice.objects.get().cached_input == 1.25
    assert client.get("/admin/aigen/usageledger/").status_code == 200
    assert client.get("/admin/aigen/usageledger/add/").status_code == 403
