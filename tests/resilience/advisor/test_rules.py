"""Each finding fires on the pattern it describes, with its evidence, and stays
silent on healthy traffic and on a single outlier (rollups from synthetic
traffic, written as the call-log writer writes them)."""
from __future__ import annotations

from datetime import timedelta

import pytest

from resilience.advisor.services import findings_compute
from resilience.models import BreakerEvent
from tests.resilience.advisor.conftest import HEALTHY, NOW, minute_delta, traffic

pytestmark = pytest.mark.django_db


def kinds(name: str = "api") -> dict[str, object]:
    return {f.kind: f for f in findings_compute(now=NOW, names=[name])}


def test_healthy_traffic_has_no_findings(healthy):
    healthy("api")
    assert findings_compute(now=NOW) == []


def test_latency_regression_fires_on_a_slow_quarter_hour(healthy):
    healthy("api", recent=lambda _: minute_delta(calls=30, latencies=[v * 4 for v in HEALTHY]))
    finding = kinds()["latency_regression"]
    figures = finding.evidence["figures"]
    assert figures["p95_ms"] > 250 and 60 < figures["baseline_median_ms"] < 80
    assert figures["baseline_samples"] == 7  # the daily baseline: 7 whole previous days
    assert "daily p95" in finding.evidence["windows"]["baseline"]
    assert "MAD" in finding.evidence["threshold"]
    assert finding.severity == "critical"  # about 4x
    assert finding.proposal is None


def test_latency_regression_ignores_a_single_slow_call(healthy):
    def recent(moment):
        delta = minute_delta(calls=30)
        if moment >= NOW - timedelta(minutes=1):
            delta.add_call(outcome="ok", attempts=1, latency_ms=30_000, cache_hit=False)
        return delta

    healthy("api", recent=recent)
    assert "latency_regression" not in kinds()


def test_latency_baseline_falls_back_to_24_hours_and_resists_one_slow_hour(policy):
    policy("api")
    traffic("api", since=timedelta(hours=26), until=timedelta(minutes=16),
            make=lambda _: minute_delta(calls=30))
    # One slow hour in the baseline: the median does not move.
    traffic("api", since=timedelta(hours=5), until=timedelta(hours=4),
            make=lambda _: minute_delta(calls=30, latencies=[v * 20 for v in HEALTHY]))
    traffic("api", since=timedelta(minutes=16),
            make=lambda _: minute_delta(calls=30, latencies=[v * 3 for v in HEALTHY]))
    finding = kinds()["latency_regression"]
    assert "hourly p95" in finding.evidence["windows"]["baseline"]
    assert finding.evidence["figures"]["baseline_median_ms"] < 80


def test_error_spike_fires_and_proposes_serving_stale(healthy):
    healthy("api", cache_ttl=30, recent=lambda _: minute_delta(calls=30, failed=12))
    finding = kinds()["error_spike"]
    assert finding.evidence["figures"]["failure_rate"] == pytest.approx(0.4, abs=0.01)
    assert finding.evidence["figures"]["baseline_failure_rate"] == 0
    assert (finding.proposal.field, finding.proposal.from_value, finding.proposal.to_value) == \
        ("cache_serve_stale", False, True)


def test_error_spike_ignores_a_single_failure(healthy):
    healthy("api", recent=lambda moment: minute_delta(
        calls=30, failed=1 if moment >= NOW - timedelta(minutes=1) else 0))
    assert "error_spike" not in kinds()


def _opens(count: int, *, within: timedelta) -> None:
    for index in range(count):
        event = BreakerEvent.objects.create(upstream="api", from_state="closed", to_state="open")
        BreakerEvent.objects.filter(pk=event.pk).update(created_at=NOW - within * (index + 1) / (count + 1))


def test_breaker_flapping_fires_on_opens_per_hour(healthy):
    healthy("api", breaker_reset_timeout=5.0)
    _opens(6, within=timedelta(hours=1))
    finding = kinds()["breaker_flapping"]
    assert finding.evidence["figures"]["opens_last_hour"] == 6
    assert (finding.proposal.field, finding.proposal.from_value, finding.proposal.to_value) == \
        ("breaker_reset_timeout", 5.0, 30.0)
    assert "at most 120 opens and probe rounds an hour instead of 720" in finding.proposal.expected


def test_breaker_flapping_ignores_one_open(healthy):
    healthy("api")
    _opens(1, within=timedelta(hours=1))
    _opens(5, within=timedelta(hours=20))  # spread over the day: not flapping now
    assert "breaker_flapping" not in kinds()


def test_retry_waste_fires_when_retries_rarely_recover(healthy):
    healthy("api", retry_total=3)
    traffic("api", since=timedelta(hours=2), every=2,
            make=lambda _: minute_delta(calls=1, attempts=4, outcome="http_error",
                                        signals={"retried": 1}))
    finding = kinds()["retry_waste"]
    assert finding.evidence["figures"]["retried_calls"] == 60
    assert finding.evidence["figures"]["recovery_rate"] == 0
    assert (finding.proposal.field, finding.proposal.from_value, finding.proposal.to_value) == \
        ("retry_total", 3, 0)


def test_retry_waste_silent_when_retries_recover(healthy):
    healthy("api", retry_total=3)
    traffic("api", since=timedelta(hours=2), every=2,
            make=lambda _: minute_delta(calls=1, attempts=2, signals={"retried": 1, "retried_ok": 1}))
    assert "retry_waste" not in kinds()


def test_timeout_tight_fires_when_calls_time_out(healthy):
    # p99 about 74 ms against an 80 ms read timeout, and 48 timeouts in the last 16 minutes.
    healthy("api", read_timeout=0.08, deadline=5.0,
            recent=lambda _: minute_delta(calls=30, failed=3, failed_outcome="timeout"))
    finding = kinds()["timeout_tight"]
    assert finding.evidence["figures"]["timeouts"] == 48
    assert finding.evidence["figures"]["p99_ms"] >= 0.8 * 80
    assert finding.proposal.field == "read_timeout"
    p99 = finding.evidence["figures"]["p99_ms"]
    assert finding.proposal.to_value == pytest.approx(2 * p99 / 1000, rel=0.01)


def test_timeout_loose_fires_when_far_above_p99(healthy):
    healthy("api", read_timeout=30.0, deadline=60.0)
    finding = kinds()["timeout_loose"]
    assert finding.evidence["figures"]["p99_ms"] < 80
    assert (finding.proposal.field, finding.proposal.from_value, finding.proposal.to_value) == \
        ("read_timeout", 30.0, 1.0)
    assert "0 of" in finding.proposal.expected  # no call of the last 24 h took longer


def test_timeouts_fitting_the_traffic_are_quiet(healthy):
    healthy("api", read_timeout=0.5)
    assert not {"timeout_tight", "timeout_loose"} & set(kinds())


def test_cache_opportunity_fires_with_caching_off(healthy):
    healthy("api")
    traffic("api", since=timedelta(hours=3), every=1,
            make=lambda _: minute_delta(calls=0, signals={"cacheable": 5, "refetch": 4, "refetch_gap_s": 80}))
    finding = kinds()["cache_opportunity"]
    assert finding.evidence["figures"]["refetch_share"] == 0.8
    assert finding.evidence["figures"]["mean_repeat_interval_s"] == 20
    assert (finding.proposal.field, finding.proposal.from_value, finding.proposal.to_value) == \
        ("cache_ttl", 0, 30)


def test_cache_ttl_short_fires_when_repeats_come_after_expiry(healthy):
    healthy("api", cache_ttl=2)
    traffic("api", since=timedelta(hours=3), every=1,
            make=lambda _: minute_delta(calls=0, signals={"cacheable": 5, "refetch": 4, "refetch_gap_s": 80}))
    finding = kinds()["cache_ttl_short"]
    assert (finding.proposal.from_value, finding.proposal.to_value) == (2, 30)


def test_cache_quiet_when_calls_rarely_repeat(healthy):
    healthy("api")
    traffic("api", since=timedelta(hours=3), every=1,
            make=lambda _: minute_delta(calls=0, signals={"cacheable": 5, "refetch": 1, "refetch_gap_s": 20}))
    assert not {"cache_opportunity", "cache_ttl_short"} & set(kinds())


def test_bulkhead_and_pool_saturation(healthy):
    healthy("api", bulkhead_max=4, pool_size=10,
            recent=lambda _: minute_delta(calls=30, signals={"rejected_bulkhead": 2, "rejected_pool": 1}))
    found = kinds()
    assert (found["bulkhead_saturation"].proposal.field, found["bulkhead_saturation"].proposal.to_value) == \
        ("bulkhead_max", 6)
    pool = found["pool_saturation"].proposal
    assert (pool.field, pool.to_value) == ("pool_size", 20)
    assert found["bulkhead_saturation"].evidence["figures"]["rejected"] == 30  # 15 whole minutes


def test_saturation_ignores_a_single_rejection(healthy):
    healthy("api", bulkhead_max=4, recent=lambda moment: minute_delta(
        calls=30, signals={"rejected_bulkhead": 1} if moment >= NOW - timedelta(minutes=1) else {}))
    assert "bulkhead_saturation" not in kinds()


def test_retry_after_pressure(healthy):
    healthy("api", retry_respect_retry_after=False,
            recent=lambda _: minute_delta(calls=30, signals={"throttled": 6}))
    finding = kinds()["retry_after_pressure"]
    assert finding.evidence["figures"]["throttled"] == 90
    assert "rate-limit callers" in finding.evidence["advice"]
    assert (finding.proposal.field, finding.proposal.to_value) == ("retry_respect_retry_after", True)


def test_retry_after_pressure_ignores_a_single_429(healthy):
    healthy("api", recent=lambda moment: minute_delta(
        calls=30, signals={"throttled": 1} if moment >= NOW - timedelta(minutes=1) else {}))
    assert "retry_after_pressure" not in kinds()


def test_findings_per_endpoint_use_the_same_rules(healthy):
    from resilience.advisor.data import advisor_data

    healthy("api")
    _, subjects = advisor_data(now=NOW, by_endpoint=True)
    assert set(subjects) == {("api", "")}  # the synthetic rows carry no endpoint
