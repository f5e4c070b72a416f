"""Admin: live-editable upstream policies with history and rollback
(django-simple-history), read-only call logs and breaker events.

An upstream's change page shows its live breaker, error rate and p95 at the
top (from the rollups: resilience.telemetry.selectors) with reset, probe and
clear-cache buttons; each posts to its own admin URL (staff with change
permission, CSRF-checked) and calls the same service as the list action,
which needs the same permission. The operations API asks the same
permissions (resilience.ops.permissions).
"""
from __future__ import annotations

import functools
from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import models
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponseRedirect
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.views.decorators.http import require_POST
from simple_history.admin import SimpleHistoryAdmin

from resilience.client.accounts import account_state
from resilience.client.endpoints import endpoint_states
from resilience.exceptions import AppError
from resilience.models import BreakerEvent, CallLog, Endpoint, Upstream
from resilience.ops import services
from resilience.ops.admin_forms import REASON_MAX_LENGTH, EndpointForm, UpstreamForm
from resilience.ops.permissions import admin_allows
from resilience.telemetry.calllog import call_log_flush
from resilience.telemetry.selectors import WINDOWS, breaker_status, upstream_stats

# The service's name on every admin page (title bar, header, index).
admin.site.site_header = "Resilience gateway"
admin.site.site_title = "Resilience gateway admin"
admin.site.index_title = "Upstream policies, telemetry and jobs"

BREAKER_COLOURS = {"closed": "#2e7d32", "half-open": "#ef6c00", "open": "#c62828", "disabled": "#757575"}


def _for_user(form_class: type, request: HttpRequest) -> type:
    """The admin's form class for this request, knowing who saves (the
    credential binding rule: resilience.ops.admin_forms)."""
    return type(form_class.__name__, (form_class,), {"user": request.user})


class EndpointInline(admin.TabularInline):
    """The upstream's endpoints, edited on its page (each change is kept in
    the endpoint's history: simple_history records inline saves too)."""

    model = Endpoint
    form = EndpointForm
    extra = 0

    def get_formset(self, request: HttpRequest, obj: Any = None, **kwargs: Any) -> Any:
        formset = super().get_formset(request, obj, **kwargs)
        formset.form = _for_user(formset.form, request)
        return formset
    # Accounts (credential kind, token URL, refresh token) are set on the endpoint's own page.
    fields = ("name", "base_url", "auth_env_var", "weight", "priority", "enabled", "model", "pool_size",
              "wire_format", "rpm_limit", "tpm_limit")
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}


@admin.register(Endpoint)
class EndpointAdmin(SimpleHistoryAdmin):
    """Endpoints are edited inline on their upstream; this page lists them
    and their history."""

    form = EndpointForm
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}
    list_display = ("__str__", "base_url", "weight", "priority", "enabled", "model", "wire_format",
                    "rpm_limit", "tpm_limit", "breaker", "account_status")
    list_select_related = ("upstream",)
    readonly_fields = ("account_status",)

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        return _for_user(super().get_form(request, obj, change=change, **kwargs), request)
    list_filter = ("enabled",)
    search_fields = ("name", "base_url", "upstream__name")
    actions = ["reset_breakers", "force_open_5m", "force_open_1h"]

    @admin.display(description="account")
    def account_status(self, obj: Endpoint) -> str:
        """An OAuth2 account's state (never a token): state, expiry, last
        refresh, failure reason; "-" for an environment variable."""
        state = account_state(obj) if obj.pk else None
        if state is None:
            return "-"
        parts = [state["state"].replace("_", " ")]
        if state["expires_at"]:
            parts.append(f"expires {state['expires_at']}")
        if state["last_refresh_at"]:
            parts.append(f"last refresh {state['last_refresh_at']} ({state['refreshes']} in all)")
        if state["failure_reason"]:
            parts.append(f"failure: {state['failure_reason']}")
        if state["needs_new_token"]:
            parts.append("NEEDS A NEW REFRESH TOKEN: paste one in 'New refresh token'")
        return "; ".join(parts)

    @admin.display(description="breaker")
    def breaker(self, obj: Endpoint) -> str:
        states = {s["name"]: s for s in endpoint_states(obj.upstream)}
        state = states.get(obj.name, {})
        forced = state.get("forced")
        return f"{state.get('state', '?')}" + (f" (forced by {forced['by']})" if forced else "")

    def has_breaker_permission(self, request: HttpRequest) -> bool:
        """Breaker controls need what the upstream's page needs (change_upstream)."""
        return admin_allows(request.user, "resilience.change_upstream")

    def _breakers(self, request: HttpRequest, queryset: QuerySet[Endpoint], control: Any, done: str) -> None:
        by = request.user.get_username()
        for endpoint in queryset.select_related("upstream"):
            try:
                control(name=endpoint.upstream.name, endpoint=endpoint.name, by=by)
            except AppError as err:
                self.message_user(request, f"{endpoint}: {err.message}", messages.ERROR)
            else:
                self.message_user(request, f"{endpoint}: breaker {done}.", messages.SUCCESS)

    @admin.action(description="Reset breaker (close it now)", permissions=["breaker"])
    def reset_breakers(self, request: HttpRequest, queryset: QuerySet[Endpoint]) -> None:
        self._breakers(request, queryset, services.breaker_endpoint_reset, "reset")

    @admin.action(description="Force breaker open for 5 minutes", permissions=["breaker"])
    def force_open_5m(self, request: HttpRequest, queryset: QuerySet[Endpoint]) -> None:
        self._breakers(request, queryset, functools.partial(services.breaker_force_open, seconds=300),
                       "forced open for 5 minutes")

    @admin.action(description="Force breaker open for 1 hour", permissions=["breaker"])
    def force_open_1h(self, request: HttpRequest, queryset: QuerySet[Endpoint]) -> None:
        self._breakers(request, queryset, functools.partial(services.breaker_force_open, seconds=3600),
                       "forced open for 1 hour")


def _topic(title: str, *fields: str, description: str = "") -> tuple[str, dict[str, Any]]:
    options: dict[str, Any] = {"classes": ["collapse"], "fields": fields}
    if description:
        options["description"] = description
    return title, options


@admin.register(Upstream)
class UpstreamAdmin(SimpleHistoryAdmin):
    form = UpstreamForm
    change_form_template = "admin/resilience/upstream/change_form.html"
    inlines = [EndpointInline]
    def get_queryset(self, request):
        # The breaker column reads each upstream's endpoints: one query for the page.
        return super().get_queryset(request).prefetch_related("endpoints")

    list_display = ("name", "base_url_short", "enabled", "breaker_state", "error_rate_5m", "calls_5m",
                    "log_sampling", "updated")
    list_filter = ("enabled", "breaker_enabled")
    search_fields = ("name", "base_url", "description")
    readonly_fields = ("created_at", "updated_at")
    actions = ["reset_breaker", "clear_cache", "probe_now"]
    # A base URL typed without a scheme means https (Django 6's default).
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}
    fieldsets = (
        (None, {"fields": ("name", "base_url", "enabled", "description", "change_reason")}),
        # One topic each, collapsed: the page opens on what identifies the policy.
        _topic("Health probe", "health_path", "probe_interval"),
        _topic("Timeouts", "connect_timeout", "read_timeout", "deadline"),
        _topic("Streams", "first_token_timeout", "stream_idle_timeout", "stream_max_seconds",
               description="Timers of a supervised stream: a stream that misses one is continued on "
                           "another endpoint (resilience.client.stream)."),
        _topic("Retries", "retry_total", "retry_backoff_factor", "retry_backoff_max", "retry_jitter",
               "retry_statuses", "retry_methods", "retry_respect_retry_after", "retry_after_max"),
        _topic("Circuit breaker", "breaker_enabled", "breaker_fail_max", "breaker_probe_interval",
               "breaker_reset_timeout", "breaker_success_threshold", "breaker_half_open_max"),
        _topic("Response cache", "cache_ttl", "cache_methods", "cache_vary_headers", "cache_serve_stale",
               "cache_stale_max_age", "single_flight"),
        _topic("Connection", "pool_size", "bulkhead_max", "bulkhead_wait", "default_headers"),
        _topic("Endpoint pool", "endpoint_strategy", "max_ejection_percent", "served_models",
               "context_fallback_model", "content_policy_fallback_model",
               description="With no endpoints below, calls go to the base URL above."),
        _topic("Call log", "log_sample_rate",
               description="Failed, retried, stale and rejected calls always keep their call-log "
                           "row; successful calls are sampled at this rate. Statistics, the "
                           "dashboard and the error-rate column count every call (rollups)."),
        _topic("Authentication", "auth_kind", "auth_env_var", "auth_name",
               description="The secret stays in the environment; only its variable name is stored."),
        _topic("Record", "created_at", "updated_at"),
    )

    class Media:
        css = {"all": ["resilience/admin.css"]}

    # -- the change page: live state at the top, buttons, a reason kept in history ---------
    def get_urls(self) -> list[Any]:
        info = self.opts.app_label, self.opts.model_name
        buttons = [path(f"<path:object_id>/{slug}/", self.admin_site.admin_view(require_POST(view)),
                        name=f"{info[0]}_{info[1]}_{slug.replace('-', '_')}")
                   for slug, view in (("reset-breaker", self.reset_breaker_view), ("probe", self.probe_view),
                                      ("clear-cache", self.clear_cache_view))]
        return buttons + super().get_urls()

    def _button_target(self, request: HttpRequest, object_id: str) -> Upstream:
        obj = self.get_object(request, object_id)
        if obj is None:
            raise Http404("no such upstream")
        if not self.has_change_permission(request, obj):
            raise PermissionDenied
        return obj

    def _back(self, obj: Upstream) -> HttpResponseRedirect:
        return HttpResponseRedirect(reverse("admin:resilience_upstream_change", args=[obj.pk]))

    def reset_breaker_view(self, request: HttpRequest, object_id: str) -> HttpResponseRedirect:
        obj = self._button_target(request, object_id)
        status = services.breaker_reset(name=obj.name)
        self.message_user(request, f"Breaker of {obj.name} reset (now {status['state']}).", messages.SUCCESS)
        return self._back(obj)

    def clear_cache_view(self, request: HttpRequest, object_id: str) -> HttpResponseRedirect:
        obj = self._button_target(request, object_id)
        removed = services.upstream_cache_clear(name=obj.name)
        self.message_user(request, f"Removed {removed} cached response(s) of {obj.name}.", messages.SUCCESS)
        return self._back(obj)

    def probe_view(self, request: HttpRequest, object_id: str) -> HttpResponseRedirect:
        obj = self._button_target(request, object_id)
        self._probe_message(request, obj)
        return self._back(obj)

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "",
                    extra_context: Any = None) -> Any:
        obj = self.get_object(request, object_id)
        live = {}
        if obj is not None:
            call_log_flush()
            stats = upstream_stats(name=obj.name, window=WINDOWS["5m"])
            breaker = breaker_status(obj)
            live = {"breaker": breaker, "stats": stats,
                    "colour": BREAKER_COLOURS.get(breaker["state"], "#000"),
                    "error_rate": f"{stats['error_rate'] * 100:.1f}%",
                    "p95": "\u2014" if stats["p95_ms"] is None else f"{stats['p95_ms']:.0f} ms"}
        return super().change_view(request, object_id, form_url, {**(extra_context or {}), "live": live})

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        return _for_user(super().get_form(request, obj, change=change, **kwargs), request)

    def save_model(self, request: HttpRequest, obj: Upstream, form: Any, change: bool) -> None:
        reason = (form.cleaned_data.get("change_reason") or "").strip()
        note = getattr(obj, "_change_reason", "")  # a credential bound (the form noted it)
        if reason:
            # simple_history stores it as history_change_reason
            obj._change_reason = f"{note}; {reason}"[:REASON_MAX_LENGTH] if note else reason
        super().save_model(request, obj, form, change)

    # -- the list ----------------------------------------------------------------------------
    @admin.display(description="updated", ordering="updated_at")
    def updated(self, obj: Upstream) -> str:
        # Short and local: the default "Nov. 28, 2026, 10:01 a.m." alone widened the table.
        return timezone.localtime(obj.updated_at).strftime("%Y-%m-%d %H:%M")

    @admin.display(description="base URL", ordering="base_url")
    def base_url_short(self, obj: Upstream) -> str:
        # Long URLs wrap inside their cell instead of widening the table past the screen.
        return format_html('<span class="rs-cell-url" title="{}">{}</span>', obj.base_url, obj.base_url)

    def _stats(self, obj: Upstream) -> dict[str, Any]:
        cache = getattr(self, "_stats_cache", None)
        if cache is None:
            cache = self._stats_cache = {}
        if obj.pk not in cache:
            cache[obj.pk] = upstream_stats(name=obj.name, window=WINDOWS["5m"])
        return cache[obj.pk]

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> Any:
        call_log_flush()  # this process's latest calls count too
        self._stats_cache = {}
        return super().changelist_view(request, extra_context)

    @admin.display(description="breaker")
    def breaker_state(self, obj: Upstream) -> str:
        status = breaker_status(obj)
        colour = BREAKER_COLOURS.get(status["state"], "#000")
        extra = f" ({status['retry_after']:.0f}s)" if status.get("retry_after") else ""
        return format_html('<b style="color:{}">{}</b>{}', colour, status["state"], extra)

    @admin.display(description="errors 5 min")
    def error_rate_5m(self, obj: Upstream) -> str:
        return f"{self._stats(obj)['error_rate'] * 100:.1f}%"

    @admin.display(description="calls 5 min")
    def calls_5m(self, obj: Upstream) -> int:
        return self._stats(obj)["calls"]

    @admin.display(description="ok logged", ordering="log_sample_rate")
    def log_sampling(self, obj: Upstream) -> str:
        return "all" if obj.log_sample_rate >= 1 else f"{obj.log_sample_rate:.2%}"

    # The list actions need what the change page's buttons need (change_upstream).
    @admin.action(description="Reset circuit breaker", permissions=["change"])
    def reset_breaker(self, request: HttpRequest, queryset: QuerySet[Upstream]) -> None:
        for upstream in queryset:
            services.breaker_reset(name=upstream.name)
        self.message_user(request, f"Breaker reset for {queryset.count()} upstream(s).", messages.SUCCESS)

    @admin.action(description="Clear cached responses", permissions=["change"])
    def clear_cache(self, request: HttpRequest, queryset: QuerySet[Upstream]) -> None:
        removed = sum(services.upstream_cache_clear(name=u.name) for u in queryset)
        self.message_user(request, f"Removed {removed} cached response(s).", messages.SUCCESS)

    @admin.action(description="Probe now", permissions=["change"])
    def probe_now(self, request: HttpRequest, queryset: QuerySet[Upstream]) -> None:
        for upstream in queryset:
            self._probe_message(request, upstream)

    def _probe_message(self, request: HttpRequest, upstream: Upstream) -> None:
        result = services.upstream_probe(name=upstream.name)
        if result["ok"]:
            self.message_user(request, f"{upstream.name}: {result['status']} in "
                                       f"{result['latency_ms']} ms", messages.SUCCESS)
        else:
            problem = (f"{result['status']} {result.get('detail', '')[:100]}".strip() if result["status"]
                       else (result["error"] or {}).get("message"))
            self.message_user(request, f"{upstream.name}: failed ({problem})", messages.ERROR)


class ReadOnlyAdmin(admin.ModelAdmin):
    """Records to browse and filter, never to add, edit or delete."""

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [f.name for f in self.model._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(CallLog)
class CallLogAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "upstream", "method", "path", "status", "outcome", "latency_ms",
                    "attempts", "cache_hit", "breaker_state", "request_id")
    list_filter = ("upstream", "outcome", "status", "cache_hit", ("created_at", admin.DateFieldListFilter))
    search_fields = ("path", "request_id", "error")
    date_hierarchy = "created_at"
    list_per_page = 100

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> Any:
        # Say what the list holds: a reader counting rows would otherwise undercount.
        rates = list(Upstream.objects.order_by("name").values_list("name", "log_sample_rate"))
        sampling = [f"{name}: {'all' if rate >= 1 else f'{rate:.2%}'}" for name, rate in rates]
        return super().changelist_view(request, {**(extra_context or {}), "sampling": sampling})


@admin.register(BreakerEvent)
class BreakerEventAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "upstream", "from_state", "to_state", "reason")
    list_filter = ("upstream", "to_state")


from resilience.advisor import admin as advisor_admin  # noqa: E402, F401  (suggestions)
from resilience.alerts import admin as alerts_admin  # noqa: E402, F401  (rules, alerts, silences)
from resilience.jobs import admin as jobs_admin  # noqa: E402, F401  (jobs, dead letters, probes)
