"""What the rules measure besides rates: breakers and endpoints out (the
shared breaker state), queues and dead letters (the jobs ledger), probe
failure streaks, p95 from the rollup histograms; OAuth2 accounts that need a
new refresh token or whose refresh fails (the account rows), through the
real engine."""
from __future__ import annotations

import time
from datetime import timedelta

import pytest
from cryptography.fernet import Fernet
from django.utils import timezone

from resilience import exceptions, upstream
from resilience.alerts.measures import Measures
from resilience.alerts.models import AlertRule
from resilience.alerts.services import alerts_evaluate
from resilience.client import reset_clients
from resilience.client.accounts import account_refresh_token_set, accounts_forget
from resilience.jobs.models import Job, ProbeResult
from resilience.models import BreakerEvent, Endpoint
from resilience.ops import services
from resilience.telemetry.rollups import RollupDelta, minute_of, rollups_write
from tests.resilience.alerts.conftest import later
from tests.support.fake_token_server import FakeTokenServer

pytestmark = pytest.mark.django_db


def rule(**fields) -> AlertRule:
    made = AlertRule(name=f"r{AlertRule.objects.count()}", **{"op": ">", "threshold": 0, **fields})
    made.full_clean()
    made.save()
    return made


def test_breakers_open_endpoints_out_and_every_endpoint_out(policy):
    pool = policy("pool")
    for name in ("a", "b", "c"):
        Endpoint.objects.create(upstream=pool, name=name, base_url=f"https://{name}.example")
    policy("single")
    measures = lambda: Measures(timezone.now())  # noqa: E731 (a fresh read each time)
    assert measures().values(rule(metric="breakers_open")) == {"pool": 0.0, "single": 0.0}
    for name in ("a", "b"):
        services.breaker_force_open(name="pool", endpoint=name, seconds=60, by="test")
    assert measures().values(rule(metric="breakers_open"))["pool"] == 2.0
    assert measures().values(rule(metric="all_endpoints_out")) == {"pool": 0.0, "single": 0.0}
    services.breaker_force_open(name="pool", endpoint="c", seconds=60, by="test")
    every = rule(metric="all_endpoints_out", scope="upstream", target="pool")
    assert measures().values(every) == {"pool": 1.0}
    one = rule(metric="endpoints_out", scope="endpoint", target="pool/c")
    assert measures().values(one) == {"pool/c": 1.0}


def test_queue_depth_oldest_age_and_dead_letters():
    now = timezone.now()
    job = Job.objects.create(name="resilience.reap", priority="high")
    Job.objects.filter(pk=job.pk).update(created_at=now - timedelta(seconds=90))
    for ago in (timedelta(seconds=30), timedelta(hours=2)):
        Job.objects.create(name="resilience.reap", status=Job.Status.FAILED, finished_at=now - ago)
    measures = Measures(now)
    assert measures.values(rule(metric="queue_depth", scope="queue", target="high")) == {"high": 1.0}
    assert measures.values(rule(metric="queue_oldest_age"))["high"] == pytest.approx(90, abs=1)
    assert measures.values(rule(metric="queue_oldest_age"))["low"] == 0.0
    assert measures.values(rule(metric="dead_letters", window=300)) == {"all": 1.0}


def test_probe_failure_streak_and_p95_from_the_histograms(policy):
    policy("api")
    for ok in (True, False, False, False):
        ProbeResult.objects.create(upstream="api", ok=ok)
    now = timezone.now()
    delta = RollupDelta()
    for latency in [100.0] * 90 + [7000.0] * 10:
        delta.add_call(outcome="ok", attempts=1, latency_ms=latency, cache_hit=False)
    rollups_write({("api", "", minute_of(now.timestamp())): delta})
    measures = Measures(now)
    assert measures.values(rule(metric="probe_failures", scope="upstream", target="api")) == {"api": 3.0}
    [p95] = measures.values(rule(metric="p95_latency_ms", scope="upstream", target="api")).values()
    assert p95 == pytest.approx(7000, rel=0.02)
    assert measures.values(rule(metric="p95_latency_ms", scope="upstream", target="api", min_calls=500)) == {
        "api": None}  # too few calls to judge


def test_without_a_shared_store_the_recorded_transitions_count(policy, settings):
    """`make run`: no Redis, so the jobs worker's breaker store is its own; the
    web process's breaker events (in the database) say what opened."""
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    pool = policy("pool", breaker_reset_timeout=30)
    for name in ("a", "b"):
        Endpoint.objects.create(upstream=pool, name=name, base_url=f"https://{name}.example")
    now = timezone.now()
    BreakerEvent.objects.create(upstream="pool", from_state="closed", to_state="open",
                                reason="endpoint a: 5 consecutive failures")
    BreakerEvent.objects.create(upstream="pool", from_state="closed", to_state="open",
                                reason="endpoint b: forced open by olga for 600s: drill")
    every = rule(metric="all_endpoints_out", scope="upstream", target="pool")
    assert Measures(now).values(every) == {"pool": 1.0}
    # Two minutes on, a's opening (30 s reset timeout) is over; b's forced 600 s still holds.
    assert Measures(now + timedelta(minutes=2)).values(rule(metric="breakers_open")) == {"pool": 1.0}
    BreakerEvent.objects.create(upstream="pool", from_state="open", to_state="closed",
                                reason="endpoint b: reset by olga")
    assert Measures(now).values(rule(metric="breakers_open")) == {"pool": 1.0}  # a only


# -- OAuth2 accounts: through the real engine, the webhook receiving what it fires -----------
@pytest.fixture
def account_pool(settings, make_upstream):
    """`acct`: a0 (priority 0) and a1 on a loopback token server; a0's refresh
    token is one the server never issued (invalid_grant)."""
    settings.RESILIENCE = {**settings.RESILIENCE, "CREDENTIALS_KEYS": [Fernet.generate_key().decode()],
                           "ACCOUNT_BACKOFF_BASE": 0.01, "ACCOUNT_BACKOFF_MAX": 0.02}
    accounts_forget()
    tokens = FakeTokenServer(lifetime=60).start()
    row = make_upstream("acct", base_url=tokens.url, endpoint_strategy="priority", retry_total=1)
    endpoints = []
    for i, first in enumerate(["rt-never-issued", tokens.refresh_token_issue("client-1")]):
        endpoint = Endpoint(upstream=row, name=f"a{i}", base_url=tokens.url, priority=i,
                            credential_kind="oauth2_refresh", token_url=tokens.token_url,
                            client_id=f"client-{i}")
        endpoint.full_clean()
        endpoint.save()
        account_refresh_token_set(endpoint=endpoint, refresh_token=first)
        endpoints.append(endpoint)
    reset_clients()
    yield tokens, endpoints
    tokens.stop()
    accounts_forget()


@pytest.mark.django_db(transaction=True)  # refreshes run on the refresher threads
def test_an_account_needing_a_new_token_fires_once_per_change_of_its_state(account_pool, receiver, alerting):
    tokens, (a0, _) = account_pool
    alerting("account-needs-new-token", "account-refresh-failing")  # the defaults, untouched
    t0 = timezone.now()
    assert alerts_evaluate(now=t0) == []
    assert upstream("acct").get("/x").status_code == 200  # a0 refused (invalid_grant): a1 served
    moves = alerts_evaluate(now=later(t0, 1))
    assert [(m["rule"], m["subject"], m["to"]) for m in moves] == [
        ("account-needs-new-token", "acct/a0", "firing")]
    [post] = receiver.posts()
    body = post.json()
    assert body["rule"]["severity"] == "critical" and body["alerts"][0]["subject"] == "acct/a0"
    assert not any(token.encode() in post.body for token in tokens.issued)
    upstream("acct").get("/x")
    assert alerts_evaluate(now=later(t0, 6 * 3600)) == [] and len(receiver.posts()) == 1  # no repeat

    account_refresh_token_set(endpoint=a0, refresh_token=tokens.refresh_token_issue("client-0"))
    accounts_forget()
    assert upstream("acct").get("/x").status_code == 200 and tokens.refreshes["client-0"] == 1
    moves = alerts_evaluate(now=later(t0, 6 * 3600 + 1))
    assert [(m["subject"], m["to"]) for m in moves] == [("acct/a0", "resolved")]
    assert len(receiver.posts()) == 2


@pytest.mark.django_db(transaction=True)
def test_an_account_whose_refresh_fails_fires_once_and_resolves_when_it_heals(account_pool, receiver,
                                                                               alerting):
    tokens, (a0, _) = account_pool
    alerting("account-needs-new-token", "account-refresh-failing")
    account_refresh_token_set(endpoint=a0, refresh_token=tokens.refresh_token_issue("client-0"))
    tokens.fail_status = 503  # the token server is down
    with pytest.raises(exceptions.UpstreamError):  # no account can refresh
        upstream("acct").get("/x")
    t0 = timezone.now()
    moves = alerts_evaluate(now=t0)
    assert sorted((m["rule"], m["subject"], m["to"]) for m in moves) == [
        ("account-refresh-failing", "acct/a0", "firing"), ("account-refresh-failing", "acct/a1", "firing")]
    assert alerts_evaluate(now=later(t0, 60)) == []
    assert len(receiver.posts()) == 1  # one group: the rule's two accounts

    tokens.fail_status = 0
    time.sleep(0.05)  # past the backoff (at most 0.02 s here)
    assert upstream("acct").get("/x").status_code == 200
    moves = alerts_evaluate(now=later(t0, 61))
    assert [(m["subject"], m["to"]) for m in moves] == [("acct/a0", "resolved")]  # a1 not called yet
