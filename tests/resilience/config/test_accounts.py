"""`manage.py endpoints_import` (resilience.config.accounts): an account
name appears once, in the file and across upstreams; a refused file names
the entry and the field and changes nothing."""
from __future__ import annotations

import io
import json
from unittest import mock

import pytest
from cryptography.fernet import Fernet
from django.core.management import CommandError, call_command

from resilience.models import Account, Endpoint

pytestmark = pytest.mark.django_db

TOKEN_URL = "https://login.example/oauth/token"


@pytest.fixture(autouse=True)
def _keys(settings):
    settings.RESILIENCE = {**settings.RESILIENCE, "CREDENTIALS_KEYS": [Fernet.generate_key().decode()]}


def _import(data: dict) -> str:
    out = io.StringIO()
    with mock.patch("sys.stdin", io.StringIO(json.dumps(data))):
        call_command("endpoints_import", "-", stdout=out)
    return out.getvalue()


def _entry(name: str, **more) -> dict:
    return {"name": name, "base_url": "https://api.example/v1", "token_url": TOKEN_URL,
            "client_id": f"client-{name}", "refresh_token": f"rt-{name}-secret", **more}


def _state() -> list:
    return [list(Endpoint.objects.order_by("pk").values()), list(Account.objects.order_by("pk").values()),
            Endpoint.history.count()]


def test_a_name_listed_twice_is_refused_naming_both_entries(make_upstream):
    make_upstream("pool")
    _import({"upstream": "pool", "accounts": [_entry("one")]})
    before = _state()
    with pytest.raises(CommandError, match=r"nothing imported: accounts\[2\] \(one\): name: listed twice "
                                           r"\(also accounts\[0\]\)") as refused:
        _import({"upstream": "pool", "accounts": [_entry("one", weight=7), _entry("two"), _entry("one")]})
    assert "secret" not in str(refused.value)
    assert _state() == before


def test_a_name_another_upstream_has_is_refused_and_nothing_changes(make_upstream):
    make_upstream("pool")
    make_upstream("other")
    _import({"upstream": "other", "accounts": [_entry("shared")]})
    _import({"upstream": "pool", "accounts": [_entry("mine")]})
    before = _state()
    with pytest.raises(CommandError, match=r"accounts\[1\] \(shared\): name: already an endpoint of "
                                           r"upstream 'other'"):
        _import({"upstream": "pool", "accounts": [_entry("mine", weight=9), _entry("shared")]})
    assert _state() == before
    # The same file into the upstream that has it: an update.
    assert "created 0, updated 1" in _import({"upstream": "other", "accounts": [_entry("shared", weight=2)]})
