"""Suggestions: a policy change the advisor proposed, and what became of it
(registered under the resilience app through resilience.models).

Findings themselves are not stored: they are computed from the rollups when
asked for (cheap, see resilience.advisor.data). A suggestion is stored so a
person can act on it, and so its effect can be reported after it is applied.
Decided rows are deleted `RETENTION_DAYS` after the decision.
"""
from __future__ import annotations

from django.conf import settings
from django.db import models


class Suggestion(models.Model):
    class Status(models.TextChoices):
        OPEN = "open", "open"
        APPLIED = "applied", "applied"
        DISMISSED = "dismissed", "dismissed"
        ROLLED_BACK = "rolled_back", "rolled back"
        OUTDATED = "outdated", "outdated (the policy or the traffic changed)"

    upstream = models.CharField(max_length=64, db_index=True)
    endpoint = models.CharField(max_length=100, blank=True, default="",
                                help_text="Empty: the whole upstream.")
    kind = models.CharField(max_length=40, help_text="The finding's rule (see the README).")
    severity = models.CharField(max_length=10)
    field = models.CharField(max_length=64, help_text="The policy field to change.")
    from_value = models.JSONField(help_text="The field's value when proposed.")
    to_value = models.JSONField(help_text="The proposed value.")
    expected = models.TextField(help_text="The expected effect, with the numbers behind it.")
    evidence = models.JSONField(default=dict, help_text="The finding's figures, windows and threshold.")
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.OPEN, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    decided_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+", db_constraint=False,
                                   help_text="Empty for an automatic application.")
    history_id = models.IntegerField(null=True, blank=True, help_text=(
        "The policy history record the application created (admin: history, revert)."))
    effect = models.JSONField(null=True, blank=True, help_text=(
        "Before/after figures, once EFFECT_MIN_CALLS calls have passed since the application."))

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(
            fields=["upstream", "endpoint", "kind", "field"], condition=models.Q(status="open"),
            name="resilience_suggestion_one_open")]

    def __str__(self) -> str:
        return f"{self.upstream}: {self.field} {self.from_value} -> {self.to_value} ({self.kind})"
