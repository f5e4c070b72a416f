"""Admin for generation records (read-only: browse and filter, never edit),
API tokens (list and revoke; never shown, never issued here; their caller
limits, budget and priority editable with `change_apitoken`), model prices
(editable with the model's permissions) and the usage ledger (read-only).
Every change is logged in the admin's history (LogEntry).

DRF's own token admin is removed: it showed every key in clear to any staff
user with view permission on tokens. Tokens are issued by `manage.py
issue_token`, which shows a token once; the admin shows only its prefix."""
from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest
from rest_framework.authtoken.models import TokenProxy

from aigen.models import ApiToken, Generation, ModelPrice, UsageLedger
from resilience.admin import ReadOnlyAdmin

if admin.site.is_registered(TokenProxy):
    admin.site.unregister(TokenProxy)


@admin.register(Generation)
class GenerationAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "template_id", "section_id", "cached", "stream", "provider", "model",
                    "total_tokens", "latency_ms", "user", "outcome", "error_code")
    list_filter = ("outcome", "cached", "stream", "provider", "template_id")
    search_fields = ("template_id", "section_id", "cache_key", "error", "user__username")
    date_hierarchy = "created_at"
    list_select_related = ("user",)
    ordering = ("-created_at",)


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Tokens by user and prefix; deleting one (delete permission) revokes it
    in every worker within a second (aigen.edge.tokens). The caller's limits
    (requests per minute, token budget per day or month) and priority are
    editable (change permission) and apply in every worker within a second."""

    list_display = ("user", "token_prefix", "priority", "rpm_limit", "token_budget", "budget_period",
                    "created_at")
    list_filter = ("priority", "budget_period")
    search_fields = ("user__username", "prefix")
    list_select_related = ("user",)
    ordering = ("-created_at",)
    fields = ("user", "token_prefix", "created_at", "priority", "rpm_limit", "token_budget", "budget_period")
    readonly_fields = ("user", "token_prefix", "created_at")

    @admin.display(description="token")
    def token_prefix(self, obj: ApiToken) -> str:
        return f"{obj.prefix}\u2026"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # `manage.py issue_token`: the one place a token is shown


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    """USD per million tokens per model; the usage ledger prices each flush with them."""

    list_display = ("model", "input", "cached_input", "output", "updated_at")
    search_fields = ("model",)


@admin.register(UsageLedger)
class UsageLedgerAdmin(ReadOnlyAdmin):
    list_display = ("day", "user", "model", "prompt_tokens", "cached_tokens", "completion_tokens", "calls",
                    "cost")
    list_filter = ("day", "model")
    search_fields = ("user__username", "model")
    date_hierarchy = "day"
    list_select_related = ("user",)
