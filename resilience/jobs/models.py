"""The job ledger and the probe history (registered under the resilience app
through resilience.models)."""
from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models


class Job(models.Model):
    """One logical job: what to run, which attempt it is on, how it ended.

    The engine (database or RQ) carries one engine task per attempt; this row
    is the same on every backend and outlives the engine's own results.
    A `failed` row is a dead letter: every attempt failed (admin: requeue).
    """

    class Status(models.TextChoices):
        QUEUED = "queued", "queued"
        RUNNING = "running", "running"
        DONE = "done", "done"
        FAILED = "failed", "failed (dead letter)"

    class Priority(models.TextChoices):
        HIGH = "high", "high"
        NORMAL = "normal", "normal"
        LOW = "low", "low"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200, db_index=True, help_text="The job function's dotted path.")
    args = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    priority = models.CharField(max_length=10, choices=Priority.choices, default=Priority.NORMAL)
    attempts = models.PositiveSmallIntegerField(default=0, help_text="Attempts started so far.")
    max_attempts = models.PositiveSmallIntegerField(default=1)
    run_after = models.DateTimeField(null=True, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True, help_text=(
        "A running attempt not finished by then (plus grace) is taken as lost and retried."))
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="+", db_constraint=False)
    group = models.CharField(max_length=64, blank=True, db_index=True,
                             help_text="Batch the job belongs to (e.g. one warmup run).")
    unique_key = models.CharField(max_length=200, null=True, blank=True, unique=True, help_text=(
        "At most one job per key: a schedule's slot (name + interval number)."))
    engine_id = models.CharField(max_length=64, blank=True, help_text="Engine id of the current attempt.")
    result = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True, help_text="{code, message, ...} of the last failure.")
    traceback = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "lease_until"])]

    def __str__(self) -> str:
        return f"{self.name} [{self.status}] {self.id}"


class DeadLetterManager(models.Manager):
    def get_queryset(self) -> models.QuerySet:
        return super().get_queryset().filter(status=Job.Status.FAILED)


class DeadLetter(Job):
    """Jobs whose every attempt failed (a view of `Job` for the admin)."""

    objects = DeadLetterManager()

    class Meta:
        proxy = True
        verbose_name = "dead letter"


class ProbeResult(models.Model):
    """One scheduled health probe of an upstream (bounded per upstream, pruned)."""

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    upstream = models.CharField(max_length=64, db_index=True)
    ok = models.BooleanField()
    status = models.PositiveSmallIntegerField(null=True, blank=True)
    latency_ms = models.FloatField(default=0)
    error = models.CharField(max_length=500, blank=True)
    changed = models.BooleanField(default=False, help_text="Health differed from the previous probe.")

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["upstream", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.upstream}: {'ok' if self.ok else 'unhealthy'}"
