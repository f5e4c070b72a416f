"""Generation records: one row per generate request (served from the cache or
not), written in bulk off the request path by `aigen.generation.records`; API tokens,
kept as digests (`aigen.edge.tokens` issues, checks and revokes them)."""
from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


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

    class Meta:
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.prefix}\u2026"
