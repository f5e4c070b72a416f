"""The rules: one function per finding. Each reads one subject's figures
(resilience.advisor.data), and returns a `Finding` whose evidence names the
figures it used, the windows they cover and the threshold it crossed, or None.
Where a policy change can help, the finding carries a `Proposal`: the field,
its value now, the value proposed and the expected effect with its numbers.

Every threshold is a module constant, listed in the README with its rule.
Percentiles come from the rollups' latency histograms
(resilience.telemetry.histogram: within 1.75% of the exact nearest rank), of
calls that reached the upstream; a call's latency includes its retries.

Latency baseline (robust to outliers): the median and the MAD (median
absolute deviation, scaled by 1.4826 to estimate a standard deviation) of
per-bucket p95s: one per whole day of the previous 7 days when at least
`MIN_BASELINE_DAYS` such days have `MIN_BUCKET_CALLS` calls, else one per
whole hour of the previous 24 h (at least `MIN_BASELINE_HOURS` hours). One
slow hour or day moves a median by one rank at most, and one slow call in the
recent window does not move its p95.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from resilience.advisor.data import Bucket, SubjectData, Windows
from resilience.models import Upstream
from resilience.telemetry import histogram
from resilience.telemetry.rollups import RollupDelta

SEVERITIES = ("info", "warning", "critical")

# -- thresholds (README: "Findings") ------------------------------------------------------
MIN_RECENT_CALLS = 50          # latency regression: calls that reached the upstream, last 15 min
MIN_BUCKET_CALLS = 20          # a baseline hour/day counts with at least this many
MIN_BASELINE_DAYS = 3
MIN_BASELINE_HOURS = 6
REGRESSION_MADS = 3.0          # p95 above median + 3 scaled MADs...
REGRESSION_RATIO = 1.5         # ...and above 1.5 x the median
ERROR_MIN_FAILURES = 10        # error spike: failures in the last 15 min
ERROR_MIN_RATE = 0.05
ERROR_RATIO = 3.0              # and 3 x the previous 24 h's rate...
ERROR_MARGIN = 0.05            # ...and 5 points above it
FLAP_OPENS_PER_HOUR = 4        # breaker flapping: opens in the last hour
RETRY_MIN_RETRIED = 20         # retry waste: retried calls, last 24 h
RETRY_MAX_RECOVERY = 0.10      # fewer than 10% of retried calls end in a success
TIMEOUT_MIN_CALLS = 200        # timeouts: calls that reached the upstream, last 24 h
TIMEOUT_TIGHT_P99 = 0.8        # p99 at 80% of the read timeout or more...
TIMEOUT_TIGHT_SHARE = 0.01     # ...or 1% of calls timed out
TIMEOUT_LOOSE_FACTOR = 10.0    # read timeout 10 x p99 or more, no timeouts
CACHE_MIN_FETCHES = 100        # cache opportunity: cacheable fetches, last 24 h
CACHE_MIN_REFETCH = 0.30       # 30% of them fetched again within the hour
CACHE_TTL_GAP_FACTOR = 2.0     # TTL below half the mean repeat interval
SATURATION_MIN_REJECTED = 5    # pool / bulkhead: rejections in the last 15 min
THROTTLE_MIN = 10              # Retry-After pressure: 429s in the last 15 min...
THROTTLE_MIN_SHARE = 0.02      # ...2% of attempts or more


@dataclass(frozen=True)
class Proposal:
    """A policy change: `field` from `from_value` to `to_value`."""

    field: str
    from_value: Any
    to_value: Any
    expected: str


@dataclass(frozen=True)
class Finding:
    kind: str
    upstream: str
    endpoint: str
    severity: str
    title: str
    evidence: dict[str, Any]
    proposal: Proposal | None = None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["proposal"] = asdict(self.proposal) if self.proposal else None
        return data


# -- figures ---------------------------------------------------------------------------------
def p(delta: RollupDelta, q: float) -> float | None:
    return histogram.percentiles(delta.latency, (q,))[0]


def failures(delta: RollupDelta) -> int:
    """Failures of the upstream itself: HTTP errors, timeouts, connection errors."""
    return sum(delta.outcomes.get(name, 0) for name in ("http_error", "timeout", "connection_error"))


def share(part: float, whole: float) -> float:
    return round(part / whole, 4) if whole else 0.0


def figures(delta: RollupDelta) -> dict[str, Any]:
    """The figures every finding and effect report can show for one window."""
    signals = delta.signals
    attempts = delta.reached + delta.retries
    p50, p95, p99 = histogram.percentiles(delta.latency, (0.50, 0.95, 0.99))
    return {
        "calls": delta.calls, "reached": delta.reached,
        "failure_rate": share(failures(delta), delta.reached),
        "p50_ms": p50, "p95_ms": p95, "p99_ms": p99,
        "timeouts": delta.outcomes.get("timeout", 0),
        "retries": delta.retries, "retried_calls": signals.get("retried", 0),
        "retry_recovery": share(signals.get("retried_ok", 0), signals.get("retried", 0)),
        "cache_hit_rate": share(delta.cache_hits, delta.calls),
        "throttled": signals.get("throttled", 0),
        "throttled_share": share(signals.get("throttled", 0), attempts),
        "rejected_bulkhead": signals.get("rejected_bulkhead", 0),
        "rejected_pool": signals.get("rejected_pool", 0),
        "cacheable_fetches": signals.get("cacheable", 0), "refetches": signals.get("refetch", 0),
    }


def _severity(value: float, warning: float, critical: float) -> str:
    return "critical" if value >= critical else "warning" if value >= warning else "info"


def _seconds(value: float) -> float:
    return float(f"{value:.3g}")


def latency_baseline(data: SubjectData) -> tuple[str, list[float]] | None:
    """(which baseline, its per-bucket p95s), or None when there is too little."""
    def p95(bucket: Bucket) -> float | None:
        return histogram.percentiles(bucket.latency, (0.95,))[0]

    days = [p95(bucket) for bucket in data.baseline_days if bucket.reached >= MIN_BUCKET_CALLS]
    if len(days) >= MIN_BASELINE_DAYS:
        return "daily p95 over the previous 7 days", [v for v in days if v is not None]
    hours = [p95(bucket) for bucket in data.baseline_hours if bucket.reached >= MIN_BUCKET_CALLS]
    if len(hours) >= MIN_BASELINE_HOURS:
        return "hourly p95 over the previous 24 h", [v for v in hours if v is not None]
    return None


# -- the rules ---------------------------------------------------------------------------------
def latency_regression(data: SubjectData, policy: Upstream, windows: Windows) -> Finding | None:
    if data.recent.reached < MIN_RECENT_CALLS:
        return None
    baseline = latency_baseline(data)
    if baseline is None:
        return None
    label, samples = baseline
    center = statistics.median(samples)
    spread = 1.4826 * statistics.median(abs(v - center) for v in samples)
    threshold = max(center + REGRESSION_MADS * spread, center * REGRESSION_RATIO)
    current = p(data.recent, 0.95)
    if current is None or current <= threshold:
        return None
    ratio = current / center if center else math.inf
    return Finding(
        "latency_regression", data.upstream, data.endpoint, _severity(ratio, 2.0, 3.0),
        f"p95 latency {current:.0f} ms in the last 15 min, {ratio:.1f}x its usual {center:.0f} ms",
        {"figures": {"p95_ms": current, "reached": data.recent.reached,
                     "baseline_median_ms": round(center, 1),
                     "baseline_mad_ms": round(spread, 1), "baseline_samples": len(samples)},
         "windows": {"recent": "last 15 min (minute rollups)", "baseline": label},
         "threshold": f"p95 > max(median + {REGRESSION_MADS:g} x 1.4826 x MAD, {REGRESSION_RATIO:g} x median)"
                      f" = {threshold:.0f} ms"})


def error_spike(data: SubjectData, policy: Upstream, windows: Windows) -> Finding | None:
    failed = failures(data.recent)
    if failed < ERROR_MIN_FAILURES:
        return None
    rate = failed / max(data.recent.reached, 1)
    base_failed = sum(bucket.failed for bucket in data.baseline_hours)
    base_reached = sum(bucket.reached for bucket in data.baseline_hours)
    base = base_failed / base_reached if base_reached else 0.0
    threshold = max(ERROR_MIN_RATE, base * ERROR_RATIO, base + ERROR_MARGIN)
    if rate < threshold:
        return None
    proposal = None
    if policy.cache_ttl > 0 and not policy.cache_serve_stale:
        proposal = Proposal("cache_serve_stale", False, True, (
            f"{failed} calls failed in the last 15 min; cacheable ones with an expired copy (kept "
            f"{policy.cache_stale_max_age} s) would be answered stale instead of failing."))
    return Finding(
        "error_spike", data.upstream, data.endpoint, _severity(rate, 0.2, 0.5),
        f"{rate:.0%} of calls failed in the last 15 min (usually {base:.1%})",
        {"figures": {"failures": failed, "reached": data.recent.reached, "failure_rate": round(rate, 4),
                     "baseline_failure_rate": round(base, 4), "baseline_reached": base_reached,
                     "outcomes": dict(sorted(data.recent.outcomes.items()))},
         "windows": {"recent": "last 15 min (minute rollups)", "baseline": "previous 24 h (hour rollups)"},
         "threshold": f"at least {ERROR_MIN_FAILURES} failures and a rate >= max({ERROR_MIN_RATE:.0%}, "
                      f"{ERROR_RATIO:g} x baseline, baseline + {ERROR_MARGIN:.0%}) = {threshold:.1%}"},
        proposal)


def breaker_flapping(data: SubjectData, policy: Upstream, windows: Windows) -> Finding | None:
    opens = data.opens_last_hour
    if opens < FLAP_OPENS_PER_HOUR or not policy.breaker_enabled:
        return None
    reset = policy.breaker_reset_timeout
    proposed = _seconds(min(3600.0, max(2 * reset, 30.0)))
    proposal = None
    if proposed > reset:
        proposal = Proposal("breaker_reset_timeout", reset, proposed, (
            f"{opens} opens in the last hour ({data.opens_last_day} in 24 h). An open breaker would wait "
            f"{proposed:g} s instead of {reset:g} s before probing: at most {3600 / proposed:.0f} opens "
            f"and probe rounds an hour instead of {3600 / reset:.0f}, so a failing upstream gets "
            f"{proposed / reset:.0f}x fewer probe calls while it recovers."))
    return Finding(
        "breaker_flapping", data.upstream, data.endpoint, _severity(opens, 6, 12),
        f"circuit breaker opened {opens} times in the last hour",
        {"figures": {"opens_last_hour": opens, "opens_last_24h": data.opens_last_day,
                     "breaker_reset_timeout_s": reset, "breaker_fail_max": policy.breaker_fail_max},
         "windows": {"recent": "last hour (breaker events)", "context": "last 24 h (breaker events)"},
         "threshold": f"at least {FLAP_OPENS_PER_HOUR} opens per hour"},
        proposal)


def retry_waste(data: SubjectData, policy: Upstream, windows: Windows) -> Finding | None:
    signals = data.day.signals
    retried, recovered = signals.get("retried", 0), signals.get("retried_ok", 0)
    if retried < RETRY_MIN_RETRIED or policy.retry_total == 0:
        return None
    recovery = recovered / retried
    if recovery >= RETRY_MAX_RECOVERY:
        return None
    retries = data.day.retries
    to = 0 if recovered == 0 or policy.retry_total == 1 else 1
    saved = max(0, retries - retried * to)
    return Finding(
        "retry_waste", data.upstream, data.endpoint, _severity(retries, 1000, 10000),
        f"retries rarely help: {recovered} of {retried} retried calls recovered ({recovery:.0%})",
        {"figures": {"retried_calls": retried, "recovered": recovered, "recovery_rate": round(recovery, 4),
                     "retries": retries, "retry_total": policy.retry_total},
         "windows": {"recent": "last 24 h (hour rollups)"},
         "threshold": f"at least {RETRY_MIN_RETRIED} retried calls, fewer than {RETRY_MAX_RECOVERY:.0%} "
                      f"of them ending in a success"},
        Proposal("retry_total", policy.retry_total, to, (
            f"About {saved} fewer attempts a day ({retries} retries over the last 24 h) and the "
            f"failures answered sooner; at most {recovered} calls a day that a retry rescued would fail.")))


def _calls_above(delta: RollupDelta, limit_ms: float) -> int:
    return sum(count for key, count in delta.latency.items() if histogram.bucket_value(int(key)) > limit_ms)


def timeout_fit(data: SubjectData, policy: Upstream, windows: Windows) -> Finding | None:
    day = data.day
    if day.reached < TIMEOUT_MIN_CALLS:
        return None
    p99 = p(day, 0.99)
    if p99 is None:
        return None
    timeout_ms = policy.read_timeout * 1000
    timeouts = day.outcomes.get("timeout", 0)
    timed_out = timeouts / day.reached
    base = {"p99_ms": p99, "reached": day.reached, "timeouts": timeouts, "timeout_share": round(timed_out, 4),
            "read_timeout_s": policy.read_timeout, "deadline_s": policy.deadline}
    windows_used = {"recent": "last 24 h (hour rollups)"}
    if p99 >= TIMEOUT_TIGHT_P99 * timeout_ms or timed_out >= TIMEOUT_TIGHT_SHARE:
        proposed = _seconds(min(policy.deadline, max(2 * p99 / 1000, policy.read_timeout * 1.5)))
        proposal = None
        if proposed > policy.read_timeout:
            slow = _calls_above(day, TIMEOUT_TIGHT_P99 * timeout_ms)
            proposal = Proposal("read_timeout", policy.read_timeout, proposed, (
                f"{timeouts} calls ({timed_out:.1%}) timed out in 24 h and {slow} took over "
                f"{TIMEOUT_TIGHT_P99:.0%} of the {policy.read_timeout:g} s timeout; at {proposed:g} s "
                f"(2 x p99 {p99:.0f} ms, within the {policy.deadline:g} s deadline) slow answers "
                f"complete instead of being retried or failed."))
        return Finding(
            "timeout_tight", data.upstream, data.endpoint, _severity(timed_out, 0.05, 0.2),
            f"read timeout {policy.read_timeout:g} s is close to the p99 of {p99:.0f} ms",
            {"figures": base, "windows": windows_used,
             "threshold": f"p99 >= {TIMEOUT_TIGHT_P99:.0%} of the read timeout or >= "
                          f"{TIMEOUT_TIGHT_SHARE:.0%} timeouts"}, proposal)
    if timeouts == 0 and timeout_ms >= TIMEOUT_LOOSE_FACTOR * p99:
        proposed = _seconds(max(1.0, 4 * p99 / 1000))
        if proposed >= policy.read_timeout:
            return None
        cut = _calls_above(day, proposed * 1000)
        return Finding(
            "timeout_loose", data.upstream, data.endpoint, "info",
            f"read timeout {policy.read_timeout:g} s is {timeout_ms / p99:.0f}x the p99 of {p99:.0f} ms",
            {"figures": base, "windows": windows_used,
             "threshold": f"read timeout >= {TIMEOUT_LOOSE_FACTOR:g} x p99 with no timeouts"},
            Proposal("read_timeout", policy.read_timeout, proposed, (
                f"A hung upstream is given up on after {proposed:g} s instead of {policy.read_timeout:g} s "
                f"(4 x p99, at least 1 s), freeing its worker and connection sooner; {cut} of "
                f"{day.reached} calls in the last 24 h took longer and would have timed out.")))
    return None


def cache_opportunity(data: SubjectData, policy: Upstream, windows: Windows) -> Finding | None:
    signals = data.day.signals
    fetched, again = signals.get("cacheable", 0), signals.get("refetch", 0)
    if fetched < CACHE_MIN_FETCHES or again / fetched < CACHE_MIN_REFETCH:
        return None
    gap = signals.get("refetch_gap_s", 0) / again
    ratio = again / fetched
    evidence = {"figures": {"cacheable_fetches": fetched, "refetches": again,
                            "refetch_share": round(ratio, 4),
                            "mean_repeat_interval_s": round(gap, 1), "cache_ttl_s": policy.cache_ttl,
                            "cache_hit_rate": share(data.day.cache_hits, data.day.calls)},
                "windows": {"recent": "last 24 h (hour rollups)"},
                "threshold": (f"at least {CACHE_MIN_FETCHES} cacheable fetches, {CACHE_MIN_REFETCH:.0%} of "
                              f"them repeats within the hour")}
    proposed = int(min(3600, max(5, math.ceil(gap * 1.5))))
    if policy.cache_ttl == 0:
        evidence["threshold"] += ", caching off"
        return Finding(
            "cache_opportunity", data.upstream, data.endpoint, _severity(again, 10_000, 100_000),
            f"caching is off, yet {ratio:.0%} of cacheable calls repeat (every {gap:.0f} s on average)",
            evidence,
            Proposal("cache_ttl", 0, proposed, (
                f"Up to {again} of {fetched} upstream fetches in 24 h ({ratio:.0%}) could be answered from "
                f"the cache with a {proposed} s TTL (1.5 x the mean repeat interval); answers may then be "
                f"up to {proposed} s old: check the upstream's data allows it.")))
    if gap > CACHE_TTL_GAP_FACTOR * policy.cache_ttl and proposed > policy.cache_ttl:
        evidence["threshold"] += f", TTL below 1/{CACHE_TTL_GAP_FACTOR:g} of the mean repeat interval"
        return Finding(
            "cache_ttl_short", data.upstream, data.endpoint, "info",
            f"cache TTL {policy.cache_ttl} s expires before repeats come (every {gap:.0f} s on average)",
            evidence,
            Proposal("cache_ttl", policy.cache_ttl, proposed, (
                f"{again} of {fetched} fetches in 24 h ({ratio:.0%}) repeated a fetch made {gap:.0f} s "
                f"earlier on average, after the {policy.cache_ttl} s TTL; at {proposed} s most of them "
                f"would be cache hits (the hit rate is {evidence['figures']['cache_hit_rate']:.0%} now).")))
    return None


def saturation(data: SubjectData, policy: Upstream, windows: Windows) -> list[Finding]:
    found = []
    recent = data.recent
    bulkhead, pool = recent.signals.get("rejected_bulkhead", 0), recent.signals.get("rejected_pool", 0)
    window = {"recent": "last 15 min (minute rollups)"}
    if bulkhead >= SATURATION_MIN_REJECTED and policy.bulkhead_max > 0:
        rate = bulkhead / max(recent.calls, 1)
        to = min(100_000, math.ceil(policy.bulkhead_max * 1.5))
        found.append(Finding(
            "bulkhead_saturation", data.upstream, data.endpoint, _severity(rate, 0.01, 0.05),
            f"{bulkhead} calls rejected by a full bulkhead ({policy.bulkhead_max} slots) in 15 min",
            {"figures": {"rejected": bulkhead, "calls": recent.calls, "rejected_share": round(rate, 4),
                         "bulkhead_max": policy.bulkhead_max, "bulkhead_wait_s": policy.bulkhead_wait,
                         "p95_ms": p(recent, 0.95)},
             "windows": window, "threshold": f"at least {SATURATION_MIN_REJECTED} rejections"},
            Proposal("bulkhead_max", policy.bulkhead_max, to, (
                f"{bulkhead} of {recent.calls} calls ({rate:.1%}) waited {policy.bulkhead_wait:g} s for one "
                f"of {policy.bulkhead_max} slots and failed; {to} slots admit 50% more in flight per "
                f"process. If the upstream itself is slow (p95 above), more slots add load to it."))))
    if pool >= SATURATION_MIN_REJECTED:
        rate = pool / max(recent.calls, 1)
        to = min(1000, policy.pool_size * 2)
        found.append(Finding(
            "pool_saturation", data.upstream, data.endpoint, _severity(rate, 0.01, 0.05),
            f"{pool} calls found no free pooled connection ({policy.pool_size}) in 15 min",
            {"figures": {"rejected": pool, "calls": recent.calls, "rejected_share": round(rate, 4),
                         "pool_size": policy.pool_size, "p95_ms": p(recent, 0.95)},
             "windows": window, "threshold": f"at least {SATURATION_MIN_REJECTED} rejections"},
            Proposal("pool_size", policy.pool_size, to, (
                f"{pool} of {recent.calls} calls ({rate:.1%}) waited until their deadline for one of "
                f"{policy.pool_size} connections; {to} connections per process let twice as many calls "
                f"be in flight.")) if to > policy.pool_size else None))
    return found


def retry_after_pressure(data: SubjectData, policy: Upstream, windows: Windows) -> Finding | None:
    recent = data.recent
    throttled = recent.signals.get("throttled", 0)
    attempts = recent.reached + recent.retries
    if throttled < THROTTLE_MIN or throttled / max(attempts, 1) < THROTTLE_MIN_SHARE:
        return None
    rate = throttled / attempts
    ok_per_minute = recent.outcomes.get("ok", 0) / 15
    proposal = None
    if not policy.retry_respect_retry_after:
        proposal = Proposal("retry_respect_retry_after", False, True, (
            f"{throttled} of {attempts} attempts ({rate:.0%}) were answered 429 in 15 min; waiting as "
            f"the upstream's Retry-After asks stops retries from adding to the pressure."))
    return Finding(
        "retry_after_pressure", data.upstream, data.endpoint, _severity(rate, 0.2, 0.5),
        f"{rate:.0%} of attempts answered 429 Too Many Requests in the last 15 min",
        {"figures": {"throttled": throttled, "attempts": attempts, "throttled_share": round(rate, 4),
                     "successful_per_minute": round(ok_per_minute, 1),
                     "retry_respect_retry_after": policy.retry_respect_retry_after},
         "windows": {"recent": "last 15 min (minute rollups)"},
         "threshold": f"at least {THROTTLE_MIN} 429s and {THROTTLE_MIN_SHARE:.0%} of attempts",
         "advice": (f"The upstream accepts about {ok_per_minute:.0f} calls a minute: rate-limit callers "
                    f"below that, or use another endpoint or key with its own quota.")},
        proposal)


Rule = Callable[[SubjectData, Upstream, Windows], "Finding | list[Finding] | None"]
RULES: tuple[Rule, ...] = (latency_regression, error_spike, breaker_flapping, retry_waste, timeout_fit,
                           cache_opportunity, saturation, retry_after_pressure)
#: Every finding kind a rule can report.
KINDS = ("latency_regression", "error_spike", "breaker_flapping", "retry_waste", "timeout_tight",
         "timeout_loose", "cache_opportunity", "cache_ttl_short", "bulkhead_saturation", "pool_saturation",
         "retry_after_pressure")


def rules_evaluate(data: SubjectData, policy: Upstream, windows: Windows) -> list[Finding]:
    """Every finding of one subject, most severe first."""
    found: list[Finding] = []
    for rule in RULES:
        result = rule(data, policy, windows)
        if isinstance(result, Finding):
            found.append(result)
        elif result:
            found.extend(result)
    return sorted(found, key=lambda f: -SEVERITIES.index(f.severity))
