"""OAuth2 accounts (resilience.client.accounts): tokens refreshed by the
gateway through a real loopback token server that rotates refresh tokens and
revokes a family on reuse, in front of a provider that takes only live
access tokens. Clocks are moved, not waited for."""
from __future__ import annotations

import threading

import pytest
from cryptography.fernet import Fernet
from django.test import override_settings

from resilience import exceptions, upstream
from resilience.client import reset_clients, sealing
from resilience.client.accounts import TokenManager, account_refresh_token_set, accounts_forget
from resilience.client.endpoints import snapshot
from resilience.models import Account, CallLog, Endpoint
from resilience.telemetry.calllog import call_log_flush
from tests.resilience.conftest import Clock
from tests.support.fake_token_server import FakeTokenServer

KEY = Fernet.generate_key().decode()


@pytest.fixture(autouse=True)
def _keys(settings):
    settings.RESILIENCE = {**settings.RESILIENCE, "CREDENTIALS_KEYS": [KEY], "ACCOUNT_BACKOFF_BASE": 0.05,
                           "ACCOUNT_BACKOFF_MAX": 0.2}
    accounts_forget()
    yield
    accounts_forget()


@pytest.fixture
def tokens():
    server = FakeTokenServer(lifetime=60).start()
    yield server
    server.stop()


@pytest.fixture
def clock(monkeypatch):
    import time

    clock = Clock(start=time.time())
    monkeypatch.setattr(TokenManager, "clock", staticmethod(clock))
    return clock


@pytest.fixture
def accounts(make_upstream, tokens):
    def make(count: int = 1, *, token_url: str | None = None, name: str = "acct") -> list[Endpoint]:
        row = make_upstream(name, base_url=tokens.url, endpoint_strategy="priority")
        rows = []
        for i in range(count):
            endpoint = Endpoint(upstream=row, name=f"a{i}", base_url=tokens.url, priority=i,
                                credential_kind="oauth2_refresh", token_url=token_url or tokens.token_url,
                                client_id=f"client-{i}")
            endpoint.full_clean()
            endpoint.save()
            first = tokens.refresh_token_issue(f"client-{i}")
            account_refresh_token_set(endpoint=endpoint, refresh_token=first)
            rows.append(endpoint)
        reset_clients()
        return rows

    return make


def test_a_call_refreshes_once_and_sends_the_live_access_token(accounts, tokens):
    accounts(1)
    for _ in range(5):
        assert upstream("acct").get("/v1/models").status_code == 200
    assert tokens.refreshes["client-0"] == 1 and tokens.provider_ok == 5 and tokens.reuses == 0
    account = Account.objects.get()
    # Stored sealed: no token in clear in the row; the rotated refresh token opens with the key.
    stored = [account.refresh_token_sealed, account.access_token_sealed]
    assert not any(token in value for token in tokens.issued for value in stored)
    rotated = [t for t in tokens.issued if t.startswith("rt-")][-1]
    assert sealing.unseal(account.refresh_token_sealed) == rotated


def test_refresh_is_due_at_a_fifth_of_the_lifetime_left_and_rotates(accounts, tokens, clock):
    accounts(1)
    upstream("acct").get("/x")
    clock.advance(47)  # 13 s of 60 left: more than a fifth, no refresh
    upstream("acct").get("/x")
    assert tokens.refreshes["client-0"] == 1
    clock.advance(2)  # 11 s left: less than a fifth
    assert upstream("acct").get("/x").status_code == 200
    assert tokens.refreshes["client-0"] == 2 and tokens.reuses == 0


@pytest.mark.django_db(transaction=True)
def test_many_threads_due_at_once_refresh_once_with_no_reuse(accounts, tokens, clock):
    accounts(1)
    upstream("acct").get("/x")
    clock.advance(61)  # expired everywhere
    reset_clients()
    accounts_forget()
    results: list[int] = []

    def call() -> None:
        results.append(upstream("acct").get("/x").status_code)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [200] * 8
    assert tokens.refreshes["client-0"] == 2 and tokens.reuses == 0


def test_a_revoked_access_token_costs_one_refresh_and_the_call_succeeds(accounts, tokens):
    accounts(1)
    upstream("acct").get("/x")
    tokens.revoke_access()
    response = upstream("acct").get("/x")
    assert response.status_code == 200
    assert tokens.refreshes["client-0"] == 2 and tokens.provider_401 == 1


def test_a_dead_token_server_moves_traffic_to_the_other_account(accounts, tokens, clock):
    dead = FakeTokenServer().start()
    dead_url = dead.token_url
    dead.stop()
    rows = accounts(2)
    Endpoint.objects.filter(pk=rows[0].pk).update(token_url=dead_url)
    reset_clients()
    for _ in range(10):
        assert upstream("acct").get("/x").status_code == 200
    assert tokens.refreshes["client-1"] == 1
    state = Account.objects.get(endpoint=rows[0])
    assert "unreachable" in state.failure_reason and not state.needs_new_token
    shown = {e["name"]: e["account"] for e in snapshot(rows[0].upstream)["endpoints"]}
    assert shown["a0"]["state"] in ("backoff", "failing") and shown["a1"]["state"] == "ok"
    assert "unreachable" in shown["a0"]["failure_reason"]


def test_invalid_grant_marks_the_account_as_needing_a_new_token(accounts, tokens, clock):
    rows = accounts(2)
    spent = tokens.refresh_token_issue("client-0")
    account_refresh_token_set(endpoint=rows[0], refresh_token=spent)
    Account.objects.filter(endpoint=rows[0]).update(refresh_token_sealed=sealing.seal("rt-unknown"))
    for _ in range(3):
        assert upstream("acct").get("/x").status_code == 200
    state = Account.objects.get(endpoint=rows[0])
    assert state.needs_new_token and "invalid_grant" in state.failure_reason
    shown = {e["name"]: e["account"] for e in snapshot(rows[0].upstream)["endpoints"]}
    assert shown["a0"]["state"] == "needs_new_token" and "token" not in str(shown["a0"]["expires_at"])
    clock.advance(1)
    upstream("acct").get("/x")  # no retry of a grant that will not heal
    assert tokens.refreshes["client-0"] == 0
    account_refresh_token_set(endpoint=rows[0], refresh_token=spent)
    reset_clients()
    accounts_forget()
    Endpoint.objects.filter(pk=rows[1].pk).update(enabled=False)
    reset_clients()
    assert upstream("acct").get("/x").status_code == 200
    assert tokens.refreshes["client-0"] == 1


def test_no_token_reaches_the_call_log_or_an_error_body(accounts, tokens, clock):
    accounts(1)
    upstream("acct").get("/x")
    tokens.revoke_access()
    tokens.fail_status = 503
    clock.advance(0.01)
    with pytest.raises(exceptions.UpstreamHTTPError) as failed:  # the refresh failed: the 401 stands, masked
        upstream("acct").get("/x")
    body = f"{failed.value.response.text} {failed.value.as_dict()}"
    assert "Invalid token" in body and not any(token in body for token in tokens.issued)
    call_log_flush()
    logged = " ".join(f"{row.path} {row.error}" for row in CallLog.objects.all())
    assert not any(token in logged for token in tokens.issued)


def test_client_credentials_use_the_declared_secret_variable(make_upstream, tokens, settings):
    settings.RESILIENCE = {**settings.RESILIENCE,
                           "SECRETS": {**settings.RESILIENCE.get("SECRETS", {}), "UPSTREAM_CC_SECRET": "s3"}}
    tokens.client_secrets["svc"] = "s3"
    row = make_upstream("cc", base_url=tokens.url)
    endpoint = Endpoint(upstream=row, name="svc", base_url=tokens.url, credential_kind="oauth2_client",
                        token_url=tokens.token_url, client_id="svc", client_secret_env="UPSTREAM_CC_SECRET")
    endpoint.full_clean()
    endpoint.save()
    reset_clients()
    assert upstream("cc").get("/x").status_code == 200
    assert tokens.refreshes["svc"] == 1


def test_a_client_secret_variable_outside_the_allow_list_is_refused(make_upstream, tokens):
    row = make_upstream("cc", base_url=tokens.url)
    endpoint = Endpoint(upstream=row, name="svc", base_url=tokens.url, credential_kind="oauth2_client",
                        token_url=tokens.token_url, client_id="svc", client_secret_env="SECRET_KEY")
    with pytest.raises(Exception, match="client_secret_env"):
        endpoint.full_clean()


def test_sealing_rotates_keys_and_refuses_without_them(settings):
    old = sealing.seal("value")
    new_key = Fernet.generate_key().decode()
    settings.RESILIENCE = {**settings.RESILIENCE, "CREDENTIALS_KEYS": [new_key, KEY]}
    assert sealing.unseal(old) == "value"
    rotated = sealing.reseal(old)
    settings.RESILIENCE = {**settings.RESILIENCE, "CREDENTIALS_KEYS": [new_key]}
    assert sealing.unseal(rotated) == "value"
    with pytest.raises(sealing.SealBroken):
        sealing.unseal(old)
    with (override_settings(DEBUG=False, RESILIENCE={**settings.RESILIENCE, "CREDENTIALS_KEYS": []}),
          pytest.raises(sealing.SealingUnavailable)):
        sealing.seal("value")
    with override_settings(DEBUG=True, RESILIENCE={**settings.RESILIENCE, "CREDENTIALS_KEYS": []}):
        assert sealing.unseal(sealing.seal("dev")) == "dev"
