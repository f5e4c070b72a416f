"""Admin for suggestions: staff apply (a normal policy change, with history),
dismiss or roll back; everything else is read-only. Dismissing needs change
permission on suggestions; applying and rolling back change a policy, so they
need change permission on upstreams too (as the API: resilience.ops.permissions)."""
from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from resilience.advisor import services
from resilience.advisor.models import Suggestion
from resilience.ops.permissions import UPSTREAM_CHANGE


@admin.register(Suggestion)
class SuggestionAdmin(admin.ModelAdmin):
    list_display = ("id", "upstream", "endpoint", "kind", "severity", "field", "from_value", "to_value",
                    "status", "created_at", "decided_at")
    list_filter = ("status", "kind", "severity", "upstream")
    actions = ["apply", "dismiss", "rollback"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [f.name for f in self.model._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_apply_permission(self, request: HttpRequest) -> bool:
        return self.has_change_permission(request) and request.user.has_perm(UPSTREAM_CHANGE)

    def _each(self, request: HttpRequest, queryset: QuerySet[Suggestion], action: Any, verb: str) -> None:
        for row in queryset:
            try:
                action(suggestion_id=row.pk, user=request.user)
            except services.SuggestionConflict as err:
                self.message_user(request, f"#{row.pk}: {err.message}", messages.ERROR)
            else:
                self.message_user(request, f"#{row.pk} {verb}: {row.upstream}.{row.field}", messages.SUCCESS)

    @admin.action(description="Apply (policy change with history)", permissions=["apply"])
    def apply(self, request: HttpRequest, queryset: QuerySet[Suggestion]) -> None:
        self._each(request, queryset, services.suggestion_apply, "applied")

    @admin.action(description="Dismiss", permissions=["change"])
    def dismiss(self, request: HttpRequest, queryset: QuerySet[Suggestion]) -> None:
        self._each(request, queryset, services.suggestion_dismiss, "dismissed")

    @admin.action(description="Roll back (restore the previous value)", permissions=["apply"])
    def rollback(self, request: HttpRequest, queryset: QuerySet[Suggestion]) -> None:
        self._each(request, queryset, services.suggestion_rollback, "rolled back")
