"""GET /api/ai/usage: a caller's own usage; a staff user with the admin's
`aigen.view_usageledger` sees everyone's and filters by user (staff alone, or
the permission without staff, sees its own only); everyone filters by date
range and model; bad filters are a 400 naming the field; unauthenticated
callers get 401."""
from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission

from aigen.generation.ledger import TokenUsage, usage_record
from tests.support.roles import api_client, role_user

USAGE = "/api/ai/usage"
DAY1 = datetime(2026, 3, 1, 12, tzinfo=UTC)
DAY2 = datetime(2026, 3, 2, 12, tzinfo=UTC)


@pytest.fixture
def ledger(db):
    """alice: 2 calls on day 1 (model a), 1 on day 2 (model b); bob: 1 call on day 1."""
    alice = get_user_model().objects.create_user("alice")
    bob = get_user_model().objects.create_user("bob")
    for _ in range(2):
        usage_record(user_id=alice.pk, model="a", usage=TokenUsage(100, 10, 40), now=DAY1)
    usage_record(user_id=alice.pk, model="b", usage=TokenUsage(7, 3, 0), now=DAY2)
    usage_record(user_id=bob.pk, model="a", usage=TokenUsage(1000, 1, 0), now=DAY1)
    return alice, bob


def test_a_caller_sees_its_own_usage_only(ledger):
    alice, _ = ledger
    body = api_client(alice).get(USAGE).json()
    assert body["scope"] == "own"
    assert [(r["day"], r["model"], r["calls"]) for r in body["rows"]] == [("2026-03-02", "b", 1),
                                                                           ("2026-03-01", "a", 2)]
    assert body["totals"]["prompt_tokens"] == 207 and body["totals"]["cached_tokens"] == 80
    assert {r["username"] for r in body["rows"]} == {"alice"}


def test_staff_without_the_ledgers_view_permission_see_their_own_usage_only(ledger):
    staff = role_user("staff")
    usage_record(user_id=staff.pk, model="c", usage=TokenUsage(5, 5, 0), now=DAY2)
    client = api_client(staff)
    body = client.get(USAGE).json()
    assert body["scope"] == "own"
    assert [(r["username"], r["model"]) for r in body["rows"]] == [("staff-user", "c")]
    assert body["totals"]["calls"] == 1
    refused = client.get(USAGE, {"user": "bob"})
    assert refused.status_code == 403 and "view_usageledger" in refused.json()["error"]["message"]


def test_the_permission_without_staff_reads_no_one_elses_usage(ledger):
    reader = ledger_reader("user", "outsider")  # the admin would not let a non-staff account in
    client = api_client(reader)
    assert client.get(USAGE).json()["scope"] == "own"
    assert client.get(USAGE, {"user": "bob"}).status_code == 403


def test_a_caller_may_not_read_another_users_usage(ledger):
    alice, _ = ledger
    response = api_client(alice).get(USAGE, {"user": "bob"})
    assert response.status_code == 403 and response.json()["success"] is False


def ledger_reader(role: str, username: str):
    """A `role` user holding the admin's permission to view the usage ledger."""
    user = role_user(role, username=username)
    user.user_permissions.add(Permission.objects.get(content_type__app_label="aigen",
                                                     codename="view_usageledger"))
    return get_user_model().objects.get(pk=user.pk)


def test_with_the_ledgers_view_permission_staff_see_everyone_and_filter_by_user_dates_and_model(ledger):
    staff = api_client(ledger_reader("staff", "auditor"))
    everyone = staff.get(USAGE).json()
    assert everyone["scope"] == "all" and everyone["totals"]["calls"] == 4
    bob = staff.get(USAGE, {"user": "bob"}).json()
    assert [r["username"] for r in bob["rows"]] == ["bob"] and bob["totals"]["prompt_tokens"] == 1000
    day2 = staff.get(USAGE, {"since": "2026-03-02", "until": "2026-03-02"}).json()
    assert [(r["username"], r["model"]) for r in day2["rows"]] == [("alice", "b")]
    assert staff.get(USAGE, {"model": "a"}).json()["totals"]["calls"] == 3
    assert staff.get(USAGE, {"user": "nobody"}).status_code == 404


@pytest.mark.parametrize(("query", "field"), [({"since": "yesterday"}, "since"),
                                              ({"since": "2026-03-02", "until": "2026-03-01"}, "until")])
def test_bad_filters_are_a_400_naming_the_field(ledger, query, field):
    response = api_client(ledger[0]).get(USAGE, query)
    assert response.status_code == 400
    assert field in str(response.json()["error"])


def test_the_usage_needs_authentication(db):
    assert api_client("anonymous").get(USAGE).status_code == 401
