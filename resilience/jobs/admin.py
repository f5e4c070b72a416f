"""Admin for jobs (all of them, read-only), dead letters (with a requeue
action, for users with change permission on dead letters), the engine's task
results and the probe history; registered from resilience.admin."""
from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from resilience.jobs.models import DeadLetter, Job, ProbeResult
from resilience.jobs.runner import job_requeue
from resilience.ops.permissions import DEADLETTER_CHANGE


class _ReadOnly(admin.ModelAdmin):
    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [f.name for f in self.model._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Job)
class JobAdmin(_ReadOnly):
    list_display = ("created_at", "name", "status", "priority", "attempts", "max_attempts", "owner",
                    "group", "finished_at")
    list_filter = ("status", "priority", "name")
    search_fields = ("id", "name", "group", "unique_key")
    date_hierarchy = "created_at"
    list_per_page = 100


@admin.register(DeadLetter)
class DeadLetterAdmin(_ReadOnly):
    list_display = ("finished_at", "name", "attempts", "error_message", "owner", "group")
    list_filter = ("name",)
    search_fields = ("id", "name", "group")
    actions = ["requeue"]

    @admin.display(description="error")
    def error_message(self, obj: Job) -> str:
        error = obj.error or {}
        return format_html("<code>{}</code> {}", error.get("code", ""), error.get("message", ""))

    def has_requeue_permission(self, request: HttpRequest) -> bool:
        # The rows stay read-only (has_change_permission is False for every
        # user), so the action asks the model permission itself.
        return request.user.has_perm(DEADLETTER_CHANGE)

    @admin.action(description="Requeue (a fresh set of attempts)", permissions=["requeue"])
    def requeue(self, request: HttpRequest, queryset: QuerySet) -> None:
        count = sum(job_requeue(row) for row in queryset)
        self.message_user(request, f"Requeued {count} job(s).", messages.SUCCESS)


@admin.register(ProbeResult)
class ProbeResultAdmin(_ReadOnly):
    list_display = ("created_at", "upstream", "ok", "status", "latency_ms", "changed", "error")
    list_filter = ("upstream", "ok", "changed")
    date_hierarchy = "created_at"
    list_per_page = 100
