"""Generation records: one row per generate request (served from the cache or
not), written in bulk off the request path by `aigen.generation.records`; API tokens,
kept as digests (`aigen.edge.tokens` issues, checks and revokes them), with the
caller's limits and budget (`aigen.generation.quotas`); model prices and the usage
ledger (`aigen.generation.ledger`)."""
from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone

from resilience.client.context import PRIORITIES


class Generation(models.Model):
    class Outcome(models.TextChoices):
        OK = "ok", "ok"
        ERROR = "error", "error"
        ABORTED = "aborted", "aborted (client went away)"

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    template_id = models.CharField(max_length=64)
    section_id = models.CharField(max_length=64)
    template_version = models.PositiveIntegerField(null=True, blank=True)
    cache_key = models.CharField(max_length=250, blank=True)
    cached = models.BooleanField(default=False)
    stream = models.BooleanField(default=False)
    provider = models.CharField(max_length=32)
    model = models.CharField(max_length=100)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    total_tokens = models.PositiveIntegerField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(default=0)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                             related_name="+", db_constraint=False)
    outcome = models.CharField(max_length=10, choices=Outcome.choices, default=Outcome.OK, db_index=True)
    error_code = models.CharField(max_length=64, blank=True)
    error = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["template_id", "section_id", "created_at"])]

    def __str__(self) -> str:
        how = "cache" if self.cached else self.provider
        return f"{self.template_id}/{self.section_id} via {how}: {self.outcome}"


class ApiToken(models.Model):
    """A user's API token, stored as the SHA-256 digest of the token: the
    token itself is shown once, when issued (`manage.py issue_token`), and is
    in no table, backup or admin page. `prefix` (its first characters) tells
    tokens apart on screen. One per user; deleting it revokes it."""

    digest = models.CharField(max_length=64, unique=True, editable=False)
    prefix = models.CharField(max_length=12, editable=False)
    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_token")
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    # Caller limits (aigen.generation.quotas); empty = unlimited.
    priority = models.CharField(
        max_length=8, choices=[(p, p) for p in PRIORITIES], default="normal",
        help_text="Admission priority of this caller's calls. A staff user's `normal` counts as `high`; "
                  "`low` stays low (a staff batch token).")
    rpm_limit = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)],
        help_text="Requests per minute (a sliding 60 s window); empty = unlimited.")
    token_budget = models.PositiveBigIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)],
        help_text="Tokens (prompt + completion) per budget period; empty = unlimited.")
    budget_period = models.CharField(
        max_length=8, choices=[("day", "day (UTC)"), ("month", "month (UTC)")], default="day")

    class Meta:
        verbose_name = "API token"

    @property
    def limited(self) -> bool:
        return bool(self.rpm_limit or self.token_budget)

    def __str__(self) -> str:
        return f"{self.prefix}\u2026"


_PRICE = {"max_digits": 12, "decimal_places": 6, "default": Decimal(0),
          "validators": [MinValueValidator(Decimal(0))]}


class ModelPrice(models.Model):
    """What a model's tokens cost, in USD per million tokens. Cached input
    tokens (the provider's `cached_tokens` / `cache_read_input_tokens`) are
    billed at `cached_input`, never at `input`."""

    model = models.CharField(max_length=100, unique=True, help_text="The model name callers send.")
    input = models.DecimalField(help_text="USD per million prompt tokens.", **_PRICE)
    cached_input = models.DecimalField(help_text="USD per million cached prompt tokens.", **_PRICE)
    output = models.DecimalField(help_text="USD per million completion tokens.", **_PRICE)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["model"]

    def __str__(self) -> str:
        return self.model


class UsageLedger(models.Model):
    """Tokens, calls and cost per user (API token), UTC day and model, as
    the providers reported them; written in batches off the request path
    (aigen.generation.ledger), pruned after `AIGEN["USAGE_RETENTION_DAYS"]`."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+",
                             db_constraint=False)
    day = models.DateField(db_index=True)
    model = models.CharField(max_length=100)
    prompt_tokens = models.PositiveBigIntegerField(default=0, help_text="Cached ones included.")
    cached_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    calls = models.PositiveBigIntegerField(default=0)
    cost = models.DecimalField(max_digits=20, decimal_places=8, default=Decimal(0), help_text="USD")

    class Meta:
        verbose_name = "usage ledger row"
        ordering = ["-day", "user_id", "model"]
        constraints = [models.UniqueConstraint(fields=["user", "day", "model"], name="aigen_usage_key")]

    def __str__(self) -> str:
        return f"{self.user_id} {self.day} {self.model}"
