"""Evaluating the rules, moving alerts, notifying once per transition;
silences; retention.

`alerts_evaluate()` (the scheduled job `resilience.alerts_evaluate`, one run
per interval across the cluster; `manage.py alerts_evaluate` by hand) reads
each enabled rule's values (resilience.alerts.measures) and moves each
alert:

    resolved --holds--> pending --holds for `for_seconds`--> firing --stops--> resolved
    pending --stops--> resolved (quietly: it never fired)

Each move is a compare-and-set on the alert's `version` (one UPDATE ...
WHERE version = seen): however many evaluators run at once, exactly one
makes it, writes its `AlertEvent` and notifies. Firing and resolving notify;
a still-firing alert is notified again after its rule's `repeat_interval`
(the same compare-and-set on `last_notified_at`). Alerts of one rule that
moved in one evaluation go out as one group (Alertmanager's model).

Silences (`silence_create`) suppress notifications of matching alerts until
their end; state and history still move, and an alert still firing when its
silence ends is notified at the next evaluation.

On failure: a notification no receiver took is recorded `failed` and, for a
firing alert, sent again at the next evaluation (its `last_notified_at` is
cleared). An evaluator that dies between a move and its notification loses
that notification (at most once, never twice).
"""
from __future__ import annotations

import logging
import operator
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from resilience.alerts.conf import alerts_settings
from resilience.alerts.measures import Measures
from resilience.alerts.models import Alert, AlertEvent, AlertRule, Silence
from resilience.alerts.notify import group_notify, group_payload

logger = logging.getLogger(__name__)

clock = timezone.now  # seam: tests move the clock

COMPARE = {AlertRule.Op.BELOW: operator.lt, AlertRule.Op.ABOVE: operator.gt}
FIRING, PENDING, RESOLVED = Alert.State.FIRING, Alert.State.PENDING, Alert.State.RESOLVED
REPEAT = "repeat"


def _alert_view(alert: Alert, transition: str) -> dict[str, Any]:
    def iso(moment: datetime | None) -> str | None:
        return moment.isoformat() if moment else None

    return {"subject": alert.subject, "state": alert.state, "transition": transition, "value": alert.value,
            "severity": alert.rule.severity, "active_since": iso(alert.active_since),
            "fired_at": iso(alert.fired_at), "resolved_at": iso(alert.resolved_at)}


class _Run:
    """One evaluation: the moves it won and the notifications they owe."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self.silences = list(Silence.objects.filter(starts_at__lte=now, ends_at__gt=now))
        self.moves: list[dict[str, Any]] = []
        self.owed: dict[int, list[tuple[Alert, AlertEvent, str]]] = defaultdict(list)

    def silenced(self, alert: Alert) -> bool:
        return any(s.matches(alert.rule_id, alert.subject) for s in self.silences)

    def step(self, rule: AlertRule, alert: Alert | None, subject: str, value: float | None) -> None:
        holds = value is not None and COMPARE[rule.op](value, rule.threshold)
        if alert is None:
            if not holds:
                return
            try:
                alert, _ = Alert.objects.get_or_create(rule=rule, subject=subject)
            except IntegrityError:  # another evaluator created it between our get and create
                alert = Alert.objects.get(rule=rule, subject=subject)
            alert.rule = rule
        now, state = self.now, alert.state
        fields: dict[str, Any] = {"value": value}
        if holds and state == RESOLVED:
            fields.update(active_since=now, fired_at=None, resolved_at=None, last_notified_at=None)
            target = FIRING if rule.for_seconds == 0 else PENDING
        elif holds and state == PENDING and now - alert.active_since >= timedelta(seconds=rule.for_seconds):
            target = FIRING
        elif not holds and state in (PENDING, FIRING):
            target = RESOLVED
        elif holds and state == FIRING and self._repeat_due(rule, alert):
            target = REPEAT
        else:
            if alert.value != value:
                Alert.objects.filter(pk=alert.pk).update(value=value)
            return
        notify = target in (FIRING, REPEAT) or (target == RESOLVED and state == FIRING)
        if target == FIRING:
            fields["fired_at"] = now
        elif target == RESOLVED:
            fields["resolved_at"] = now
        silenced = notify and self.silenced(alert)
        if notify and not silenced:
            fields["last_notified_at"] = now
        new_state = FIRING if target == REPEAT else target
        moved = Alert.objects.filter(pk=alert.pk, version=alert.version).update(
            state=new_state, version=F("version") + 1, updated_at=now, **fields)
        if not moved:
            return  # another evaluator made this move (and owes its notification)
        for name, field_value in fields.items():
            setattr(alert, name, field_value)
        alert.state, alert.version = new_state, alert.version + 1
        event = AlertEvent.objects.create(
            created_at=now, alert=alert, rule=rule.name, subject=subject, severity=rule.severity,
            from_state=state, to_state=target, value=value,
            notified=AlertEvent.Notified.SILENCED if silenced else AlertEvent.Notified.NONE)
        self.moves.append({"rule": rule.name, "subject": subject, "from": state, "to": target,
                           "value": value})
        log = logger.warning if target == FIRING else logger.info
        log("alert %s [%s]: %s -> %s (value %s)", rule.name, subject, state, target, value)
        if notify and not silenced:
            self.owed[rule.pk].append((alert, event, target))

    def _repeat_due(self, rule: AlertRule, alert: Alert) -> bool:
        if self.silenced(alert):
            return False
        last = alert.last_notified_at
        return last is None or self.now - last >= timedelta(seconds=rule.repeat_interval)

    def notify(self, rules: dict[int, AlertRule]) -> None:
        for rule_id, owed in self.owed.items():
            payload = group_payload(rules[rule_id], [_alert_view(alert, target) for alert, _, target in owed])
            payload["sent_at"] = self.now.isoformat()
            sent = group_notify(payload)
            outcome = (AlertEvent.Notified.NO_RECEIVER if sent is None
                       else AlertEvent.Notified.SENT if sent else AlertEvent.Notified.FAILED)
            AlertEvent.objects.filter(pk__in=[event.pk for _, event, _ in owed]).update(notified=outcome)
            if sent is False:  # a firing alert goes again at the next evaluation
                Alert.objects.filter(pk__in=[a.pk for a, _, _ in owed], state=FIRING).update(
                    last_notified_at=None)


def alerts_evaluate(*, now: datetime | None = None) -> list[dict[str, Any]]:
    """Evaluate every enabled rule once (see the module docstring); returns
    the moves this call made."""
    run = _Run(now or clock())
    measures = Measures(run.now)
    rules = {rule.pk: rule for rule in AlertRule.objects.filter(enabled=True)}
    alerts: dict[int, dict[str, Alert]] = defaultdict(dict)
    for alert in Alert.objects.filter(rule__in=list(rules)).exclude(state=RESOLVED):
        alerts[alert.rule_id][alert.subject] = alert
    for rule in rules.values():
        values = measures.values(rule)
        known = alerts[rule.pk]
        for subject in sorted(set(values) | set(known)):
            alert = known.get(subject)
            if alert is not None:
                alert.rule = rule
            run.step(rule, alert, subject, values.get(subject))
    # Alerts of rules since disabled resolve: their condition no longer counts.
    stale = Alert.objects.filter(state__in=[PENDING, FIRING], rule__enabled=False).select_related("rule")
    for alert in stale:
        run.step(alert.rule, alert, alert.subject, None)
    run.notify({**rules, **{a.rule_id: a.rule for o in run.owed.values() for a, _, _ in o}})
    return run.moves


#: A week: the account rules notify once per change of an account's state, not again while it lasts.
ONCE = 7 * 24 * 3600

#: The seeds' rules (also created by migrations 0010_alerts and 0015_account_alerts, which keep
#: their own copies).
DEFAULT_RULES: list[dict[str, Any]] = [
    {"name": "success-rate-warning", "description": "Success rate under 90% for a minute",
     "metric": "success_rate", "op": "<", "threshold": 90.0, "severity": "warning"},
    {"name": "success-rate-critical", "description": "Success rate under 80% for a minute",
     "metric": "success_rate", "op": "<", "threshold": 80.0, "severity": "critical"},
    {"name": "latency-p95-slow", "description": "p95 latency over 5 s for two minutes",
     "metric": "p95_latency_ms", "op": ">", "threshold": 5000.0, "severity": "warning", "for_seconds": 120},
    {"name": "breaker-open", "description": "A circuit breaker opened",
     "metric": "breakers_open", "op": ">", "threshold": 0.0, "severity": "warning", "for_seconds": 0},
    {"name": "all-endpoints-down", "description": "Every endpoint of an upstream is out of rotation",
     "metric": "all_endpoints_out", "op": ">", "threshold": 0.0, "severity": "critical", "for_seconds": 0},
    {"name": "account-needs-new-token", "description": "An OAuth2 account's refresh token was refused "
     "(invalid_grant): set a new one", "metric": "account_needs_new_token", "op": ">", "threshold": 0.0,
     "severity": "critical", "for_seconds": 0, "repeat_interval": ONCE},
    {"name": "account-refresh-failing", "description": "An OAuth2 account's token refresh fails "
     "(token server down or refusing)", "metric": "account_refresh_failing", "op": ">", "threshold": 0.0,
     "severity": "warning", "for_seconds": 0, "repeat_interval": ONCE},
]


def alert_rules_seed() -> list[str]:
    """Create the default rules that do not exist yet (by name); returns the
    created names. Existing rules are the operator's: never changed here."""
    created = []
    for fields in DEFAULT_RULES:
        rule = AlertRule(**fields)
        rule.full_clean(validate_unique=False)
        _, was_created = AlertRule.objects.get_or_create(name=fields["name"], defaults=fields)
        if was_created:
            created.append(fields["name"])
    return created


def alerts_firing() -> list[Alert]:
    """Firing alerts, most severe first (the API, the dashboard)."""
    order = {"critical": 0, "warning": 1, "info": 2}
    firing = list(Alert.objects.filter(state=FIRING).select_related("rule"))
    return sorted(firing, key=lambda a: (order.get(a.rule.severity, 3), a.rule.name, a.subject))


def silence_create(*, rule: AlertRule | None, subject: str = "", seconds: float, by: Any = None,
                   comment: str = "") -> Silence:
    """Silence matching alerts (`rule` None: every rule; `subject` empty:
    every subject) from now for `seconds`."""
    now = clock()
    silence = Silence(rule=rule, subject=subject, starts_at=now, ends_at=now + timedelta(seconds=seconds),
                      comment=comment, created_by=by if getattr(by, "pk", None) else None)
    silence.full_clean()
    silence.save()
    logger.info("silence %s: %s [%s] until %s (%s)", silence.pk, rule or "*", subject or "*",
                silence.ends_at.isoformat(), getattr(by, "username", "") or "system")
    return silence


def silence_end(*, silence: Silence) -> Silence:
    """End a silence now."""
    now = clock()
    if silence.ends_at > now:
        silence.ends_at = max(now, silence.starts_at + timedelta(microseconds=1))
        silence.save(update_fields=["ends_at"])
        logger.info("silence %s ended", silence.pk)
    return silence


def alerts_prune(*, now: datetime | None = None) -> dict[str, int]:
    """Delete history, resolved alerts and ended silences older than `RETENTION_DAYS`."""
    cutoff = (now or clock()) - timedelta(days=alerts_settings.RETENTION_DAYS)
    with transaction.atomic():
        events, _ = AlertEvent.objects.filter(created_at__lt=cutoff).delete()
        resolved, _ = Alert.objects.filter(state=RESOLVED, updated_at__lt=cutoff).delete()
        silences, _ = Silence.objects.filter(ends_at__lt=cutoff).delete()
    return {"events": events, "alerts": resolved, "silences": silences}
