"""Logins throttled (issue 23 M5): the admin login locks out after
LOGIN_FAILURE_LIMIT failures per username and per client address
(django-axes, settings "Login throttle"); the reset commands and the cool-off
lift it."""
from __future__ import annotations

import datetime

import pytest
from axes.models import AccessAttempt
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client

PASSWORD = "a-long-passphrase-9"
LOGIN = "/admin/login/?next=/admin/"


@pytest.fixture
def admin_user(db):
    return get_user_model().objects.create_superuser("alice", "alice@example.com", PASSWORD)


def _login(username: str, password: str, address: str = "203.0.113.7") -> int:
    """The admin login form's answer: 302 (logged in), 200 (form again), 429 (locked out)."""
    client = Client(REMOTE_ADDR=address)
    response = client.post(LOGIN, {"username": username, "password": password})
    if response.status_code == 302:
        assert client.session.get("_auth_user_id")
    return response.status_code


def test_wrong_passwords_lock_the_user_out_until_reset(admin_user, settings):
    assert settings.AXES_FAILURE_LIMIT == 5
    assert [_login("alice", f"wrong-{i}", f"198.51.100.{i}") for i in range(5)][:4] == [200] * 4
    assert _login("alice", PASSWORD, "192.0.2.50") == 429  # the right one, from a fresh address: refused
    call_command("axes_reset_username", "alice")
    assert _login("alice", PASSWORD, "192.0.2.50") == 302


def test_one_address_guessing_many_users_is_locked_out(admin_user):
    for i in range(5):
        _login(f"guess{i}", "wrong")
    assert _login("alice", PASSWORD) == 429  # from the guessing address
    assert _login("alice", PASSWORD, "192.0.2.99") == 302  # from elsewhere alice is not locked
    call_command("axes_reset_ip", "203.0.113.7")
    assert _login("alice", PASSWORD) == 302


def test_the_lockout_ends_after_the_cool_off(admin_user, settings):
    settings.AXES_COOLOFF_TIME = datetime.timedelta(minutes=15)
    for _ in range(5):
        _login("alice", "wrong")
    assert _login("alice", PASSWORD) == 429
    # Move the stored failures 16 minutes into the past (the clock the cool-off reads).
    for attempt in AccessAttempt.objects.all():
        attempt.attempt_time -= datetime.timedelta(minutes=16)
        attempt.save()
    assert _login("alice", PASSWORD) == 302
