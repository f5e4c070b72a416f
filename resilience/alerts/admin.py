"""Admin for alerts: rules (with history: who changed what, and revert),
alerts and their transitions (read-only), silences (with who made them and
an action to end them now)."""
from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from simple_history.admin import SimpleHistoryAdmin

from resilience.alerts import services
from resilience.alerts.models import Alert, AlertEvent, AlertRule, Silence


@admin.register(AlertRule)
class AlertRuleAdmin(SimpleHistoryAdmin):
    list_display = ("name", "enabled", "metric", "scope", "target", "op", "threshold", "for_seconds",
                    "severity")
    list_filter = ("enabled", "severity", "metric")
    search_fields = ("name", "description", "target")


class _ReadOnly(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Alert)
class AlertAdmin(_ReadOnly):
    list_display = ("rule", "subject", "state", "value", "active_since", "fired_at", "resolved_at",
                    "last_notified_at")
    list_filter = ("state", "rule")
    list_select_related = ("rule",)


@admin.register(AlertEvent)
class AlertEventAdmin(_ReadOnly):
    list_display = ("created_at", "rule", "subject", "severity", "from_state", "to_state", "value",
                    "notified")
    list_filter = ("to_state", "notified", "rule")


@admin.register(Silence)
class SilenceAdmin(admin.ModelAdmin):
    list_display = ("__str__", "rule", "subject", "starts_at", "ends_at", "created_by", "comment")
    list_select_related = ("rule", "created_by")
    readonly_fields = ("created_by",)
    actions = ["end_now"]

    def save_model(self, request: HttpRequest, obj: Silence, form: object, change: bool) -> None:
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)

    @admin.action(description="End the selected silences now", permissions=["change"])
    def end_now(self, request: HttpRequest, queryset: QuerySet[Silence]) -> None:
        for silence in queryset:
            services.silence_end(silence=silence)
        self.message_user(request, f"Ended {queryset.count()} silence(s).", messages.SUCCESS)
