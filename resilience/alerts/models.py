"""Alert rules, the alerts they raise, their history and silences
(registered under the resilience app through resilience.models).

A rule says what is measured (`metric`), where (`scope` and `target`), the
condition (`op` and `threshold`) and how long it must hold (`for_seconds`)
before the alert fires, at which `severity`. An `Alert` is one rule's state
for one subject (an upstream, an endpoint, a queue): pending -> firing ->
resolved, moved by compare-and-set on `version`, so however many evaluators
run at once each transition happens (and notifies) once. Every transition
is an `AlertEvent` (the history); a `Silence` suppresses notifications
until its end. Retention: resilience.alerts.services.alerts_prune.
"""
from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from simple_history.models import HistoricalRecords


class Metric(models.TextChoices):
    SUCCESS_RATE = "success_rate", "success rate (%)"
    P95_LATENCY = "p95_latency_ms", "p95 latency (ms)"
    BREAKERS_OPEN = "breakers_open", "breakers open"
    ENDPOINTS_OUT = "endpoints_out", "endpoints out of rotation"
    ALL_ENDPOINTS_OUT = "all_endpoints_out", "every endpoint out (1 or 0)"
    CACHE_HIT_RATE = "cache_hit_rate", "cache hit rate (%)"
    QUEUE_DEPTH = "queue_depth", "jobs waiting in a queue"
    QUEUE_OLDEST_AGE = "queue_oldest_age", "oldest waiting job's age (s)"
    DEAD_LETTERS = "dead_letters", "dead letters in the window"
    PROBE_FAILURES = "probe_failures", "consecutive failed health probes"
    ACCOUNT_NEEDS_NEW_TOKEN = "account_needs_new_token", "an account needs a new refresh token (1 or 0)"
    ACCOUNT_REFRESH_FAILING = "account_refresh_failing", "an account's token refresh failing (1 or 0)"


#: Metrics measured per OAuth2 account: one subject ("upstream/endpoint") per account the
#: rule covers (every account, an upstream's, or one), whatever the scope.
ACCOUNT_METRICS = frozenset({Metric.ACCOUNT_NEEDS_NEW_TOKEN, Metric.ACCOUNT_REFRESH_FAILING})
#: Metrics measured per upstream (or endpoint) and per queue.
UPSTREAM_METRICS = frozenset({Metric.SUCCESS_RATE, Metric.P95_LATENCY, Metric.BREAKERS_OPEN,
                              Metric.ENDPOINTS_OUT, Metric.ALL_ENDPOINTS_OUT, Metric.CACHE_HIT_RATE,
                              Metric.PROBE_FAILURES}) | ACCOUNT_METRICS
ENDPOINT_METRICS = frozenset({Metric.SUCCESS_RATE, Metric.P95_LATENCY, Metric.BREAKERS_OPEN,
                              Metric.ENDPOINTS_OUT, Metric.CACHE_HIT_RATE}) | ACCOUNT_METRICS
QUEUE_METRICS = frozenset({Metric.QUEUE_DEPTH, Metric.QUEUE_OLDEST_AGE, Metric.DEAD_LETTERS})


class AlertRule(models.Model):
    """One condition to watch (see the module docstring)."""

    class Scope(models.TextChoices):
        ANY = "any", "any (every upstream, or every queue)"
        UPSTREAM = "upstream", "one upstream"
        ENDPOINT = "endpoint", "one endpoint (upstream/endpoint)"
        QUEUE = "queue", "one queue"

    class Op(models.TextChoices):
        BELOW = "<", "below"
        ABOVE = ">", "above"

    class Severity(models.TextChoices):
        INFO = "info", "info"
        WARNING = "warning", "warning"
        CRITICAL = "critical", "critical"

    name = models.SlugField(max_length=64, unique=True, help_text="Shown in notifications and metrics.")
    description = models.CharField(max_length=200, blank=True)
    enabled = models.BooleanField(default=True)
    metric = models.CharField(max_length=30, choices=Metric.choices)
    scope = models.CharField(max_length=10, choices=Scope.choices, default=Scope.ANY)
    target = models.CharField(max_length=130, blank=True, help_text=(
        "The upstream's name, \"upstream/endpoint\", or the queue (high, default, low); empty for any."))
    op = models.CharField(max_length=1, choices=Op.choices, default=Op.ABOVE)
    threshold = models.FloatField()
    window = models.PositiveIntegerField(default=300, validators=[MinValueValidator(60),
                                                                  MaxValueValidator(86400)], help_text=(
        "Seconds of rollups the value is computed over (whole minutes; success rate, latency, "
        "cache hit rate, dead letters)."))
    for_seconds = models.PositiveIntegerField(default=60, validators=[MaxValueValidator(86400)], help_text=(
        "Seconds the condition must hold before the alert fires (0: at once)."))
    min_calls = models.PositiveIntegerField(default=10, help_text=(
        "Rates and latency are only judged with at least this many calls in the window."))
    severity = models.CharField(max_length=10, choices=Severity.choices, default=Severity.WARNING)
    repeat_interval = models.PositiveIntegerField(default=4 * 3600, validators=[MinValueValidator(60)],
                                                  help_text="Seconds before a still-firing alert is "
                                                            "notified again.")

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    history = HistoricalRecords()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        problems: dict[str, str] = {}
        metric, scope, target = self.metric, self.scope, self.target or ""
        if scope == self.Scope.ANY and target:
            problems["target"] = "Leave it empty for scope any."
        elif scope != self.Scope.ANY and not target:
            problems["target"] = f"Name the {scope}."
        if scope == self.Scope.QUEUE and metric not in QUEUE_METRICS:
            problems["scope"] = "A queue scope fits the queue metrics only."
        elif scope in (self.Scope.UPSTREAM, self.Scope.ENDPOINT) and metric in QUEUE_METRICS:
            problems["scope"] = "Queue metrics take a queue (or any)."
        elif scope == self.Scope.ENDPOINT and metric not in ENDPOINT_METRICS:
            problems["scope"] = f"{metric} is measured per upstream, not per endpoint."
        if scope == self.Scope.ENDPOINT and target and target.count("/") != 1:
            problems["target"] = "Use upstream/endpoint."
        if scope == self.Scope.QUEUE and target and target not in ("high", "default", "low"):
            problems["target"] = "One of high, default, low."
        if problems:
            raise ValidationError(problems)

    def condition_text(self) -> str:
        return f"{self.metric} {self.op} {self.threshold:g}"


class Alert(models.Model):
    """One rule's state for one subject."""

    class State(models.TextChoices):
        PENDING = "pending", "pending"
        FIRING = "firing", "firing"
        RESOLVED = "resolved", "resolved"

    rule = models.ForeignKey(AlertRule, on_delete=models.CASCADE, related_name="alerts")
    subject = models.CharField(max_length=130, help_text="The upstream, upstream/endpoint or queue.")
    state = models.CharField(max_length=10, choices=State.choices, default=State.RESOLVED)
    value = models.FloatField(null=True, blank=True, help_text="The last value measured.")
    active_since = models.DateTimeField(null=True, blank=True, help_text="When the condition began to hold.")
    fired_at = models.DateTimeField(null=True, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    last_notified_at = models.DateTimeField(null=True, blank=True)
    version = models.PositiveIntegerField(default=0, help_text="Compare-and-set counter of transitions.")
    updated_at = models.DateTimeField(auto_now=True, db_index=True)

    class Meta:
        ordering = ["rule__name", "subject"]
        constraints = [models.UniqueConstraint(fields=["rule", "subject"], name="resilience_alert_subject")]
        indexes = [models.Index(fields=["state"], name="resilience_alert_state")]

    def __str__(self) -> str:
        return f"{self.rule_id and self.rule.name} [{self.subject}]: {self.state}"


class AlertEvent(models.Model):
    """One transition of an alert (the history), and what became of its notification."""

    class Notified(models.TextChoices):
        NONE = "none", "not notified (pending)"
        SENT = "sent", "sent"
        SILENCED = "silenced", "silenced"
        FAILED = "failed", "failed"
        NO_RECEIVER = "no_receiver", "no receiver configured"

    created_at = models.DateTimeField(db_index=True)
    alert = models.ForeignKey(Alert, on_delete=models.CASCADE, related_name="events")
    rule = models.CharField(max_length=64)
    subject = models.CharField(max_length=130)
    severity = models.CharField(max_length=10)
    from_state = models.CharField(max_length=10)
    to_state = models.CharField(max_length=10, help_text="pending, firing, resolved, or repeat (a "
                                                         "still-firing reminder).")
    value = models.FloatField(null=True, blank=True)
    notified = models.CharField(max_length=12, choices=Notified.choices, default=Notified.NONE)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.rule} [{self.subject}]: {self.from_state} -> {self.to_state}"


class Silence(models.Model):
    """No notification for matching alerts until `ends_at` (their state and
    history still move)."""

    rule = models.ForeignKey(AlertRule, null=True, blank=True, on_delete=models.CASCADE,
                             related_name="silences", help_text="Empty: every rule.")
    subject = models.CharField(max_length=130, blank=True, help_text="Empty: every subject.")
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField()
    comment = models.CharField(max_length=200, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-ends_at"]
        indexes = [models.Index(fields=["ends_at"], name="resilience_silence_ends")]

    def __str__(self) -> str:
        rule = (self.rule_id and self.rule.name) or "*"
        return f"silence {rule} [{self.subject or '*'}] until {self.ends_at}"

    def clean(self) -> None:
        if self.starts_at and self.ends_at and self.ends_at <= self.starts_at:
            raise ValidationError({"ends_at": "The end must come after the start."})

    def matches(self, rule_id: int, subject: str) -> bool:
        return ((self.rule_id is None or self.rule_id == rule_id)
                and (not self.subject or self.subject == subject))
