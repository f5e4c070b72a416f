"""Read-only admin for generation records: browse and filter, never edit."""
from __future__ import annotations

from django.contrib import admin

from aigen.models import Generation
from resilience.admin import ReadOnlyAdmin


@admin.register(Generation)
class GenerationAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "template_id", "section_id", "cached", "stream", "provider", "model",
                    "total_tokens", "latency_ms", "user", "outcome", "error_code")
    list_filter = ("outcome", "cached", "stream", "provider", "template_id")
    search_fields = ("template_id", "section_id", "cache_key", "error", "user__username")
    date_hierarchy = "created_at"
    list_select_related = ("user",)
    ordering = ("-created_at",)
