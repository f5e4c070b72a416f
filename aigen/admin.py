"""Read-only admin for generation records: browse and filter, never edit."""
from __future__ import annotations

from typing import Any

from django.contrib import admin

from aigen.models import Generation


@admin.register(Generation)
class GenerationAdmin(admin.ModelAdmin):
    list_display = ("created_at", "template_id", "section_id", "cached", "stream", "provider", "model",
                    "total_tokens", "latency_ms", "user", "outcome", "error_code")
    list_filter = ("outcome", "cached", "stream", "provider", "template_id")
    search_fields = ("template_id", "section_id", "cache_key", "error", "user__username")
    date_hierarchy = "created_at"
    list_select_related = ("user",)
    ordering = ("-created_at",)

    def get_readonly_fields(self, request: Any, obj: Any = None) -> list[str]:
        return [f.name for f in self.model._meta.fields]

    def has_add_permission(self, request: Any) -> bool:
        return False

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: Any, obj: Any = None) -> bool:
        return False
