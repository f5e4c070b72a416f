"""OAuth2 accounts (resilience.client.accounts): tokens refreshed by the
gateway through a real loopback token server that rotates refresh tokens and
revokes a family on reuse, in front of a provider that takes only live
access tokens. Clocks are moved, not waited for."""
from __future__ import annotations

import asyncio
import io
import json
import threading
from unittest import mock

import pytest
from cryptography.fernet import Fernet
from django.core.management import CommandError, call_command
from django.db import DatabaseError
from django.test import override_settings
from prometheus_client import generate_latest

from resilience import exceptions, upstream
from resilience.checks import check_credentials_keys
from resilience.client import accounts as accounts_module
from resilience.client import reset_clients, sealing
from resilience.client.accounts import TokenManager, account_refresh_token_set, accounts_forget
from resilience.client.endpoints import snapshot
from resilience.models import Account, CallLog, Endpoint
from resilience.telemetry.calllog import call_log_flush
from resilience.telemetry.metrics import scrape_registry
from tests.resilience.conftest import Clock
from tests.resilience.test_admin import page_data
from tests.support.fake_token_server import FakeTokenServer
from tests.support.roles import api_client

KEY = Fernet.generate_key().decode()
# Refreshes a caller waits for run on the refresher threads (resilience.client.accounts): they
# must see the rows the test wrote.
pytestmark = pytest.mark.django_db(transaction=True)


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


def test_a_refresh_the_caller_waits_for_ends_at_the_calls_deadline_and_finishes_behind_it(
        make_upstream, tokens, settings):
    settings.RESILIENCE = {**settings.RESILIENCE, "ACCOUNT_TOKEN_TIMEOUT": 60.0}
    row = make_upstream("acct", base_url=tokens.url, deadline=0.5, retry_total=0)
    endpoint = Endpoint(upstream=row, name="a0", base_url=tokens.url, credential_kind="oauth2_refresh",
                        token_url=tokens.token_url, client_id="client-0")
    endpoint.full_clean()
    endpoint.save()
    account_refresh_token_set(endpoint=endpoint, refresh_token=tokens.refresh_token_issue("client-0"))
    reset_clients()
    tokens.stall = 60.0  # held until released: far past the deadline, within the token timeout
    try:
        with pytest.raises(exceptions.UpstreamError):
            upstream("acct").get("/x")
        # The call ended while the token server still held the grant: its deadline bounded the wait.
        assert tokens.stalled.is_set() and tokens.refreshes["client-0"] == 0
    finally:
        tokens.release.set()
    manager = accounts_module.account_manager(accounts_module.AccountSpec.of(endpoint, "acct"))
    manager._pending[0].result(timeout=30)  # the grant finished behind the call, its tokens stored
    assert tokens.refreshes["client-0"] == 1 and Account.objects.get().access_token_sealed
    assert upstream("acct").get("/x").status_code == 200
    assert tokens.refreshes["client-0"] == 1 and tokens.reuses == 0


def test_a_grant_the_database_refused_to_store_is_stored_at_the_next_refresh_never_reused(
        accounts, tokens, clock, monkeypatch):
    """The token server rotated the refresh token, then the row's write failed (a database
    busy or down past its timeout): the call fails over, it is no 500, and the next refresh
    stores the granted tokens (or grants with the rotated refresh token), never the spent one."""
    rows = accounts(2)
    Endpoint.objects.filter(pk=rows[1].pk).update(credential_kind="env", token_url="", client_id="")
    reset_clients()
    save = Account.save
    refused: list[int] = []

    def save_refused_once(self, *args, **kwargs):
        if self.endpoint_id == rows[0].pk and not refused:
            refused.append(self.endpoint_id)
            raise DatabaseError("database is locked")
        return save(self, *args, **kwargs)

    monkeypatch.setattr(Account, "save", save_refused_once)
    # a0 (priority 0) is granted, its store refused: the call goes to a1 (a plain endpoint the
    # token server's provider refuses with 401, which is a failure like any other).
    upstream("acct").get("/x", raise_for_status=False)
    assert refused and tokens.refreshes["client-0"] == 1
    assert sealing.unseal(Account.objects.get(endpoint=rows[0]).refresh_token_sealed) != \
        [t for t in tokens.issued if t.startswith("rt-")][-1]  # the row still holds the spent one
    assert upstream("acct").get("/x").status_code == 200  # stored now, no second grant
    assert tokens.refreshes["client-0"] == 1 and tokens.reuses == 0
    clock.advance(55)  # due: the next grant uses the rotated refresh token
    accounts_forget()
    reset_clients()
    assert upstream("acct").get("/x").status_code == 200
    assert tokens.refreshes["client-0"] == 2 and tokens.reuses == 0


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


# -- import, export, rotation, displays -------------------------------------------------------
def _import(text: str) -> str:
    out = io.StringIO()
    with mock.patch("sys.stdin", io.StringIO(text)):
        call_command("endpoints_import", "-", stdout=out)
    return out.getvalue()


def test_endpoints_import_creates_and_updates_by_name_and_seals_the_tokens(make_upstream, tokens, tmp_path):
    make_upstream("pool", base_url=tokens.url)
    first, second = tokens.refresh_token_issue("c1"), tokens.refresh_token_issue("c2")
    data = {"upstream": "pool", "accounts": [
        {"name": "one", "base_url": tokens.url, "token_url": tokens.token_url, "client_id": "c1",
         "refresh_token": first, "weight": 3},
        {"name": "two", "base_url": tokens.url, "token_url": tokens.token_url, "client_id": "c2",
         "refresh_token": second, "priority": 1, "scope": "api"}]}
    out = _import(json.dumps(data))
    assert "created 2, updated 0, refresh tokens set 2" in out and first not in out and second not in out
    assert Endpoint.objects.get(name="one").weight == 3
    assert sealing.unseal(Account.objects.get(endpoint__name="two").refresh_token_sealed) == second
    data["accounts"][0] = {k: v for k, v in data["accounts"][0].items() if k != "refresh_token"}
    data["accounts"][0]["weight"] = 5
    del data["accounts"][1]
    assert "created 0, updated 1, refresh tokens set 0" in _import(json.dumps(data))
    one = Endpoint.objects.get(name="one")
    assert one.weight == 5 and one.history.count() == 2
    assert sealing.unseal(Account.objects.get(endpoint=one).refresh_token_sealed) == first
    path = tmp_path / "out.json"
    call_command("endpoints_export", "pool", "-o", str(path), stdout=io.StringIO())
    exported = json.loads(path.read_text())
    assert [a["name"] for a in exported["accounts"]] == ["one", "two"]
    assert exported["accounts"][0]["token_url"] == tokens.token_url
    assert "refresh_token" not in path.read_text()
    assert first not in path.read_text()


def test_a_bad_import_names_the_entry_and_field_and_changes_nothing(make_upstream, tokens):
    make_upstream("pool", base_url=tokens.url)
    data = {"upstream": "pool", "accounts": [
        {"name": "ok", "base_url": tokens.url, "token_url": tokens.token_url, "client_id": "c",
         "refresh_token": "rt-x"},
        {"name": "bad", "base_url": tokens.url, "token_url": "not a url", "client_id": "c",
         "refresh_token": "rt-y"}]}
    with pytest.raises(CommandError, match=r"accounts\[1\] \(bad\): token_url"):
        _import(json.dumps(data))
    data["accounts"][1] = {"name": "bad", "base_url": tokens.url, "token_url": tokens.token_url,
                           "client_id": "c"}
    with pytest.raises(CommandError, match=r"accounts\[1\] \(bad\): refresh_token: required"):
        _import(json.dumps(data))
    with pytest.raises(CommandError, match="unknown key"):
        _import(json.dumps({**data, "extra": 1}))
    assert not Endpoint.objects.exists() and not Account.objects.exists()


def test_credentials_rotate_reseals_everything_under_the_first_key(accounts, tokens, settings):
    accounts(2)
    upstream("acct").get("/x")
    new_key = Fernet.generate_key().decode()
    settings.RESILIENCE = {**settings.RESILIENCE, "CREDENTIALS_KEYS": [new_key, KEY]}
    out = io.StringIO()
    call_command("credentials_rotate", stdout=out)
    assert "2 account(s) re-encrypted" in out.getvalue()
    settings.RESILIENCE = {**settings.RESILIENCE, "CREDENTIALS_KEYS": [new_key]}
    for account in Account.objects.all():
        assert sealing.unseal(account.refresh_token_sealed).startswith("rt-")
    accounts_forget()
    reset_clients()
    assert upstream("acct").get("/x").status_code == 200


def test_stored_accounts_without_keys_are_refused_outside_debug(accounts, settings):
    accounts(1)
    settings.DEBUG = False
    settings.RESILIENCE = {**settings.RESILIENCE, "CREDENTIALS_KEYS": []}
    errors = check_credentials_keys()
    assert [e.id for e in errors] == ["resilience.E007"] and "CREDENTIALS_KEYS" in errors[0].msg
    settings.DEBUG = True
    assert check_credentials_keys() == []


def test_the_api_the_command_the_metric_and_the_admin_show_the_state_never_a_token(
        accounts, tokens, admin_client):
    rows = accounts(2)
    Account.objects.filter(endpoint=rows[1]).update(refresh_token_sealed=sealing.seal("rt-unknown"))
    Endpoint.objects.filter(pk=rows[0].pk).update(priority=5)
    reset_clients()
    for _ in range(2):
        assert upstream("acct").get("/x").status_code == 200
    texts = []
    api = api_client("viewer").get("/api/resilience/upstreams/acct")
    assert api.status_code == 200
    shown = {e["name"]: e["account"] for e in api.json()["pool"]["endpoints"]}
    assert shown["a1"]["needs_new_token"] and shown["a0"]["state"] == "ok" and shown["a0"]["refreshes"] == 1
    texts.append(api.content.decode())
    out = io.StringIO()
    call_command("upstreams", stdout=out)
    assert "NEEDS NEW REFRESH TOKEN" in out.getvalue()
    texts.append(out.getvalue())
    metrics = generate_latest(scrape_registry()).decode()
    assert 'resilience_account_needs_new_token{endpoint="a1",upstream="acct"} 1.0' in metrics
    texts.append(metrics)
    page = admin_client.get(f"/admin/resilience/endpoint/{rows[1].pk}/change/")
    assert page.status_code == 200 and "NEEDS A NEW REFRESH TOKEN" in page.content.decode()
    texts.append(page.content.decode())
    dashboard = admin_client.get("/dashboard/")
    card = "1 needs new token, 1 ok (a1: token server refused: invalid_grant)"
    assert dashboard.status_code == 200 and card in dashboard.content.decode()
    texts.append(dashboard.content.decode())
    assert not any(token in text for token in tokens.issued for text in texts)


@pytest.mark.django_db(transaction=True)
def test_the_async_face_refreshes_off_the_event_loop(accounts, tokens, clock, monkeypatch):
    accounts(1)
    client = upstream("acct")
    threads: list[bool] = []  # per grant: was it made on the event loop's thread?
    real_grant = accounts_module.grant

    def watched(*args, **kwargs):
        threads.append(threading.current_thread() is threading.main_thread())
        return real_grant(*args, **kwargs)

    monkeypatch.setattr(accounts_module, "grant", watched)

    async def main() -> list[int]:
        first = await client.aget("/x")
        clock.advance(55)  # due
        due = await client.aget("/x")
        tokens.revoke_access()  # a 401: one refresh and one retry
        refused = await client.aget("/x")
        return [first.status_code, due.status_code, refused.status_code]

    assert asyncio.run(main()) == [200, 200, 200]
    assert tokens.refreshes["client-0"] == 3 and threads == [False, False, False]


def test_the_admin_sets_a_new_refresh_token_write_only_and_never_shows_it(accounts, tokens, admin_client):
    rows = accounts(1)
    Account.objects.filter(endpoint=rows[0]).update(needs_new_token=True, failure_reason="token server "
                                                    "refused: invalid_grant")
    url = f"/admin/resilience/endpoint/{rows[0].pk}/change/"
    data = page_data(admin_client.get(url))
    fresh = tokens.refresh_token_issue("client-0")
    data["new_refresh_token"] = fresh
    assert admin_client.post(url, data).status_code == 302
    account = Account.objects.get(endpoint=rows[0])
    assert not account.needs_new_token and sealing.unseal(account.refresh_token_sealed) == fresh
    page = admin_client.get(url).content.decode()
    assert fresh not in page and account.refresh_token_sealed not in page
    reset_clients()
    assert upstream("acct").get("/x").status_code == 200
