"""The caller's admission priority, bound where the caller is (aigen.edge.auth):
the API token's, with a staff user's `normal` raised to `high`."""
from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth import get_user_model
from django.test import RequestFactory

from aigen.edge.auth import caller_priority, request_authenticate
from aigen.edge.tokens import token_issue, token_user
from aigen.models import ApiToken
from resilience.client.context import current_caller, current_priority


@pytest.mark.parametrize(("staff", "stored", "bound"), [
    (False, "normal", "normal"), (False, "high", "high"), (False, "low", "low"),
    (True, "normal", "high"), (True, "low", "low"), (True, "high", "high")])
def test_the_tokens_priority_with_staff_raised_to_high(db, staff, stored, bound):
    user = get_user_model().objects.create_user("u", is_staff=staff)
    key = token_issue(user=user)
    ApiToken.objects.filter(user=user).update(priority=stored)
    assert caller_priority(token_user(key)) == bound


def test_a_session_user_has_no_token_loaded_and_its_role_decides(db, django_assert_num_queries):
    staff = get_user_model().objects.create_user("s", is_staff=True)
    plain = get_user_model().objects.create_user("p")
    with django_assert_num_queries(0):  # nothing looked up on the request path
        assert caller_priority(staff) == "high"
        assert caller_priority(plain) == "normal"


def test_authentication_binds_the_caller_and_its_priority_for_the_requests_calls(db):
    staff = get_user_model().objects.create_user("boss", is_staff=True)
    key = token_issue(user=staff)
    request = RequestFactory().post("/v1/chat/completions", HTTP_AUTHORIZATION=f"Bearer {key}")

    async def bound():
        user = await request_authenticate(request)
        return user.pk, current_caller.get(), current_priority.get()

    assert async_to_sync(bound)() == (staff.pk, staff.pk, "high")
