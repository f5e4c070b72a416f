"""What the alert rules measure, per subject, at one moment.

Rates and latency come from the minute rollups only (never from call-log
rows): one query per distinct rule window, whose rows are (upstream,
endpoint, minute) whatever the traffic. Breakers and cooldowns come from the
shared breaker store (resilience.client.endpoints.endpoint_states); when the
cache is not shared (no Redis, as under `make run`, or Redis fallen back)
that store is this process's own, so a breaker's last recorded transition
(`BreakerEvent`, written by the process that made it; at most
`EVENT_LOOKBACK` rows per upstream) counts too: open in either is open
(cooldowns are then this process's only). Queues
from the jobs ledger (one grouped query), probes from the probe history (at
most `PROBE_LOOKBACK` rows per probed upstream). Each source is read at most
once per evaluation (`Measures` keeps what it read). OAuth2 accounts
(resilience.client.accounts) from their rows, one query: each enabled
account endpoint is a subject "upstream/endpoint", 1 when it needs a new
refresh token (`invalid_grant`, or none stored) or, for the other metric,
when its refresh is failing (and not for that reason), else 0.

A subject without data (no calls in the window, fewer than the rule's
`min_calls`) has the value None: its condition does not hold.
"""
from __future__ import annotations

import re
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count, Min, Q
from django.db.models.functions import Coalesce

from resilience.alerts.models import ACCOUNT_METRICS, QUEUE_METRICS, AlertRule, Metric
from resilience.cache import cache_is_shared, default_cache
from resilience.client.endpoints import endpoint_states
from resilience.jobs.models import Job, ProbeResult
from resilience.jobs.runner import QUEUES
from resilience.models import Account, BreakerEvent, Endpoint, MinuteRollup, Upstream
from resilience.telemetry import histogram

#: Probe results read per upstream to count consecutive failures.
PROBE_LOOKBACK = 20
#: Breaker events read per upstream when the breaker store is per process.
EVENT_LOOKBACK = 200

_FIELDS = ("upstream", "endpoint", "calls", "errors", "cache_hits", "latency")


class Measures:
    """The values of one evaluation (`now`), read lazily and once."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self._rollups: dict[int, dict[str, dict[str, Any]]] = {}
        self._upstreams: dict[str, Upstream] | None = None
        self._endpoints: dict[str, list[dict[str, Any]]] = {}
        self._queues: dict[str, dict[str, Any]] | None = None
        self._probes: dict[str, int] | None = None
        self._accounts: dict[str, dict[str, float]] | None = None

    # -- subjects ---------------------------------------------------------------------
    def upstreams(self) -> dict[str, Upstream]:
        if self._upstreams is None:
            self._upstreams = {u.name: u for u in Upstream.objects.filter(enabled=True)
                               .prefetch_related("endpoints")}
        return self._upstreams

    def values(self, rule: AlertRule) -> dict[str, float | None]:
        """{subject: value} for every subject the rule covers."""
        metric = rule.metric
        if metric in QUEUE_METRICS:
            queues = [rule.target] if rule.scope == AlertRule.Scope.QUEUE else list(QUEUES.values())
            if metric == Metric.DEAD_LETTERS and rule.scope == AlertRule.Scope.ANY:
                return {"all": self._dead_letters(rule.window)}
            return {queue: self._queue(metric, queue, rule.window) for queue in queues}
        if metric in ACCOUNT_METRICS:
            accounts = self._account_values()
            if rule.scope == AlertRule.Scope.ENDPOINT:
                return {rule.target: accounts.get(rule.target, {}).get(metric)}
            prefix = f"{rule.target}/" if rule.scope == AlertRule.Scope.UPSTREAM else ""
            return {subject: values[metric] for subject, values in accounts.items()
                    if subject.startswith(prefix)}
        if rule.scope == AlertRule.Scope.ENDPOINT:
            upstream, _, endpoint = rule.target.partition("/")
            return {rule.target: self._value(rule, upstream, endpoint)}
        names = [rule.target] if rule.scope == AlertRule.Scope.UPSTREAM else sorted(self.upstreams())
        return {name: self._value(rule, name, None) for name in names}

    # -- upstream metrics ---------------------------------------------------------------
    def _value(self, rule: AlertRule, upstream: str, endpoint: str | None) -> float | None:
        metric = rule.metric
        if metric in (Metric.SUCCESS_RATE, Metric.P95_LATENCY, Metric.CACHE_HIT_RATE):
            counts = self._counts(rule.window).get(f"{upstream}/{endpoint}" if endpoint else upstream)
            if counts is None or counts["calls"] < max(rule.min_calls, 1):
                return None
            if metric == Metric.SUCCESS_RATE:
                return round(100.0 * (counts["calls"] - counts["errors"]) / counts["calls"], 3)
            if metric == Metric.CACHE_HIT_RATE:
                return round(100.0 * counts["cache_hits"] / counts["calls"], 3)
            return histogram.percentiles(counts["latency"], [0.95])[0]
        if metric == Metric.PROBE_FAILURES:
            return float(self._probe_failures().get(upstream, 0))
        states = self._endpoint_states(upstream)
        if states is None:
            return None
        if endpoint:
            states = [s for s in states if s["name"] == endpoint]
        live = [s for s in states if s["enabled"]]
        opened = [s for s in live if s["breaker_state"] == "open"]
        out = [s for s in live if s["breaker_state"] == "open" or s["cooling_for"] > 0]
        if metric == Metric.BREAKERS_OPEN:
            return float(len(opened))
        if metric == Metric.ENDPOINTS_OUT:
            return float(len(out))
        return 1.0 if live and len(out) == len(live) else 0.0  # ALL_ENDPOINTS_OUT

    def _counts(self, window: int) -> dict[str, dict[str, Any]]:
        """Rollup totals over the last `window` seconds (whole minutes), by
        upstream and by "upstream/endpoint"."""
        if window not in self._rollups:
            start = self.now - timedelta(seconds=window)
            start = start.replace(second=0, microsecond=0)
            found: dict[str, dict[str, Any]] = defaultdict(
                lambda: {"calls": 0, "errors": 0, "cache_hits": 0, "latency": {}})
            for row in MinuteRollup.objects.filter(start__gte=start, start__lte=self.now).values(*_FIELDS):
                keys = [row["upstream"]]
                if row["endpoint"]:
                    keys.append(f"{row['upstream']}/{row['endpoint']}")
                for key in keys:
                    into = found[key]
                    for name in ("calls", "errors", "cache_hits"):
                        into[name] += row[name]
                    histogram.merge(into["latency"], row["latency"] or {})
            self._rollups[window] = dict(found)
        return self._rollups[window]

    def _endpoint_states(self, upstream: str) -> list[dict[str, Any]] | None:
        if upstream not in self._endpoints:
            row = self.upstreams().get(upstream)
            if row is None:
                return None
            states = endpoint_states(row)
            if not cache_is_shared(default_cache()):
                states = _with_recorded(row, states, now=self.now)
            self._endpoints[upstream] = states
        return self._endpoints[upstream]

    def _probe_failures(self) -> dict[str, int]:
        """Consecutive failed probes at the head of each probed upstream's history."""
        if self._probes is None:
            self._probes = {}
            for name in self.upstreams():
                streak = 0
                recent = ProbeResult.objects.filter(upstream=name).values_list("ok", flat=True)
                for ok in recent[:PROBE_LOOKBACK]:
                    if ok:
                        break
                    streak += 1
                self._probes[name] = streak
        return self._probes

    def _account_values(self) -> dict[str, dict[str, float]]:
        """{"upstream/endpoint": {metric: 1.0 or 0.0}} for every enabled account."""
        if self._accounts is None:
            rows = [(upstream.name, endpoint) for upstream in self.upstreams().values()
                    for endpoint in upstream.endpoints.all() if endpoint.enabled and endpoint.is_account]
            stored = {a.endpoint_id: a for a in Account.objects.filter(endpoint__in=[e for _, e in rows])}
            self._accounts = {}
            for upstream, endpoint in rows:
                account = stored.get(endpoint.pk)
                rotating = endpoint.credential_kind == Endpoint.CredentialKind.OAUTH2_REFRESH
                if account is None:
                    needs, failing = rotating, False
                else:
                    needs = account.needs_new_token or (rotating and not account.refresh_token_sealed)
                    failing = account.failures > 0 and not needs
                self._accounts[f"{upstream}/{endpoint.name}"] = {
                    Metric.ACCOUNT_NEEDS_NEW_TOKEN: float(needs),
                    Metric.ACCOUNT_REFRESH_FAILING: float(failing)}
        return self._accounts

    # -- queue metrics -----------------------------------------------------------------
    def _queue(self, metric: str, queue: str, window: int) -> float | None:
        if metric == Metric.DEAD_LETTERS:
            return self._dead_letters(window, queue=queue)
        waiting = self._waiting().get(queue, {"count": 0, "oldest": None})
        if metric == Metric.QUEUE_DEPTH:
            return float(waiting["count"])
        oldest = waiting["oldest"]
        return 0.0 if oldest is None else max(0.0, (self.now - oldest).total_seconds())

    def _waiting(self) -> dict[str, dict[str, Any]]:
        """Jobs waiting to run now, per queue: how many and the earliest time one
        became due (its `run_after`, else when it was queued)."""
        if self._queues is None:
            due = Q(run_after__isnull=True) | Q(run_after__lte=self.now)
            rows = (Job.objects.filter(due, status=Job.Status.QUEUED).values("priority")
                    .annotate(count=Count("id"), oldest=Min(Coalesce("run_after", "created_at"))))
            self._queues = {QUEUES[row["priority"]]: {"count": row["count"], "oldest": row["oldest"]}
                            for row in rows}
        return self._queues

    def _dead_letters(self, window: int, *, queue: str | None = None) -> float:
        since = self.now - timedelta(seconds=window)
        rows = Job.objects.filter(status=Job.Status.FAILED, finished_at__gte=since)
        if queue is not None:
            rows = rows.filter(priority={v: k for k, v in QUEUES.items()}[queue])
        return float(rows.count())


_FORCED = re.compile(r"forced open by .* for (\d+(?:\.\d+)?)s")


def _with_recorded(upstream: Upstream, states: list[dict[str, Any]], *,
                   now: datetime) -> list[dict[str, Any]]:
    """`states` with each breaker's last recorded transition where this
    process saw it closed (another process's breaker, without a shared store).

    A recorded opening counts while it can still hold: for the upstream's
    reset timeout (a forced one: for its seconds) plus a minute. After that
    the breaker has half-opened at its next call and recorded what followed,
    or nothing called it and its state was lost with the process that held
    it: an old "open" is not an alert forever."""
    last: dict[str, tuple[str, datetime, str]] = {}
    events = BreakerEvent.objects.filter(upstream=upstream.name).order_by("-created_at", "-id")
    for reason, to_state, at in events.values_list("reason", "to_state", "created_at")[:EVENT_LOOKBACK]:
        # An endpoint's events say so first ("endpoint b: ..."; resilience.client.receivers).
        name = reason.split(":", 1)[0].removeprefix("endpoint ") if reason.startswith("endpoint ") else ""
        last.setdefault(name, (to_state, at, reason))
    merged = []
    for state in states:
        recorded = last.get(state["name"])
        if recorded and state["breaker_state"] == "closed" and state["state"] != "disabled":
            to_state, at, reason = recorded
            forced = _FORCED.search(reason)
            holds = float(forced.group(1)) if forced else upstream.breaker_reset_timeout
            if to_state != "open" or now - at <= timedelta(seconds=holds + 60):
                state = {**state, "breaker_state": to_state, "state": to_state}
        merged.append(state)
    return merged

