"""The alert rules as a Prometheus rules file, for shops that alert with
Prometheus and Alertmanager instead (`manage.py alerts_export --prometheus`).

Each enabled rule becomes one alerting rule over this service's own
`/metrics`: the same condition, window, `for` and severity, labelled with
the rule's id. Where the metrics cannot say exactly what the database rule
measures, the expression is the nearest one and its annotation says so:
`endpoints_out` counts open breakers only (cooldowns are not exported), and
`dead_letters` is the change of the dead-letter gauge over the window.
The account rules read the account gauges (resilience.telemetry.accounts):
needing a new refresh token, and failing refreshes when not for that.
"""
from __future__ import annotations

from typing import Any

import yaml

from resilience.alerts.models import AlertRule, Metric

FAILED = "http_error|timeout|connection_error|breaker_open|rejected"
CACHED = "cache_hit|stale|shared"


def _selector(rule: AlertRule, **extra: str) -> str:
    labels = dict(extra)
    if rule.scope == AlertRule.Scope.UPSTREAM:
        labels["upstream"] = rule.target
    elif rule.scope == AlertRule.Scope.ENDPOINT:
        labels["upstream"], _, labels["endpoint"] = rule.target.partition("/")
    elif rule.scope == AlertRule.Scope.QUEUE:
        labels["queue"] = rule.target
    parts = [f'{name}="{value}"' if not name.endswith("~") else f'{name[:-1]}=~"{value}"'
             for name, value in labels.items()]
    return "{" + ",".join(parts) + "}"


def _expr(rule: AlertRule) -> tuple[str, str]:
    """(PromQL, a note when it only approximates the rule)."""
    window, op, threshold = f"{rule.window}s", rule.op, f"{rule.threshold:g}"
    endpoint = rule.scope == AlertRule.Scope.ENDPOINT
    calls = "resilience_endpoint_calls_total" if endpoint else "resilience_upstream_calls_total"
    by = "upstream, endpoint" if endpoint else "upstream"
    metric = rule.metric
    if metric in (Metric.SUCCESS_RATE, Metric.CACHE_HIT_RATE):
        outcomes = FAILED if metric == Metric.SUCCESS_RATE else CACHED
        part = f"sum by ({by}) (rate({calls}{_selector(rule, **{'outcome~': outcomes})}[{window}]))"
        total = f"sum by ({by}) (rate({calls}{_selector(rule)}[{window}]))"
        share = f"100 * ({part} / {total})"
        if metric == Metric.SUCCESS_RATE:
            share = f"100 - {share}"
        enough = f"sum by ({by}) (increase({calls}{_selector(rule)}[{window}])) >= {rule.min_calls}"
        return f"({share}) {op} {threshold} and on ({by}) ({enough})", ""
    if metric == Metric.P95_LATENCY:
        buckets = f"resilience_upstream_call_duration_seconds_bucket{_selector(rule)}"
        note = "per upstream (the latency histogram has no endpoint label)" if endpoint else ""
        return (f"histogram_quantile(0.95, sum by (upstream, le) (rate({buckets}[{window}]))) * 1000 "
                f"{op} {threshold}"), note
    if metric in (Metric.BREAKERS_OPEN, Metric.ENDPOINTS_OUT):
        note = "open breakers only: cooldowns are not exported" if metric == Metric.ENDPOINTS_OUT else ""
        pool = f"count by ({by}) (resilience_endpoint_breaker_state{_selector(rule)} == 2)"
        if endpoint:
            return f"{pool} {op} {threshold}", note
        single = f"count by (upstream) (resilience_breaker_state{_selector(rule)} == 2)"
        return f"({pool} or {single}) {op} {threshold}", note
    if metric == Metric.ALL_ENDPOINTS_OUT:
        return (f"(min by (upstream) (resilience_endpoint_breaker_state{_selector(rule)}) == 2) or "
                f"(max by (upstream) (resilience_breaker_state{_selector(rule)}) == 2)",
                "every endpoint's breaker open (cooldowns are not exported)")
    if metric == Metric.QUEUE_DEPTH:
        return f"resilience_jobs_queue_depth{_selector(rule)} {op} {threshold}", ""
    if metric == Metric.QUEUE_OLDEST_AGE:
        return f"resilience_jobs_queue_oldest_age_seconds{_selector(rule)} {op} {threshold}", ""
    if metric in (Metric.ACCOUNT_NEEDS_NEW_TOKEN, Metric.ACCOUNT_REFRESH_FAILING):
        needs = f"max by (upstream, endpoint) (resilience_account_needs_new_token{_selector(rule)})"
        if metric == Metric.ACCOUNT_NEEDS_NEW_TOKEN:
            return f"{needs} {op} {threshold}", ""
        failures = f"resilience_account_refresh_failures{_selector(rule)}"
        failing = f"max by (upstream, endpoint) (clamp_max({failures}, 1))"
        return f"({failing} * on (upstream, endpoint) (1 - {needs})) {op} {threshold}", ""
    if metric == Metric.DEAD_LETTERS:
        return (f"delta(resilience_jobs_dead_letters[{window}]) {op} {threshold}",
                "the change of the dead-letter count over the window (for every queue)")
    return f"resilience_probe_consecutive_failures{_selector(rule)} {op} {threshold}", ""  # PROBE_FAILURES


def prometheus_rule(rule: AlertRule) -> dict[str, Any]:
    expr, note = _expr(rule)
    annotations = {"summary": rule.description or rule.condition_text(),
                   "condition": f"{rule.condition_text()} over {rule.window}s ({rule.scope}"
                                f"{': ' + rule.target if rule.target else ''})"}
    if note:
        annotations["approximation"] = note
    return {"alert": rule.name, "expr": expr, "for": f"{rule.for_seconds}s",
            "labels": {"severity": rule.severity, "rule_id": str(rule.pk), "service": "resilience-gateway"},
            "annotations": annotations}


def prometheus_rules() -> str:
    """Every enabled rule as a Prometheus rules file (YAML)."""
    rules = [prometheus_rule(rule) for rule in AlertRule.objects.filter(enabled=True).order_by("name")]
    document = {"groups": [{"name": "resilience-gateway", "rules": rules}]}
    return yaml.safe_dump(document, sort_keys=False, width=200)
