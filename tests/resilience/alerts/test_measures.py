"""What the rules measure besides rates: breakers and endpoints out (the
shared breaker state), queues and dead letters (the jobs ledger), probe
failure streaks, p95 from the rollup histograms."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from resilience.alerts.measures import Measures
from resilience.alerts.models import AlertRule
from resilience.jobs.models import Job, ProbeResult
from resilience.models import BreakerEvent, Endpoint
from resilience.ops import services
from resilience.telemetry.rollups import RollupDelta, minute_of, rollups_write

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
