"""Root URL configuration."""
from django.contrib import admin
from django.templatetags.static import static
from django.urls import include, path, re_path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularSwaggerView

from aigen.edge import messages as anthropic_messages
from aigen.edge import openai as openai_views
from project.schema import SchemaView
from resilience.ops import dashboard, demo, health, upstream_dashboard
from resilience.ops.api import api_route_fallback
from resilience.telemetry import metrics

urlpatterns = [
    # The front doors first: the resolver tries the patterns in order, and these carry the traffic.
    # The OpenAI-compatible front door (aigen.edge.openai): base URL <host>/v1 for any OpenAI SDK.
    path("v1/chat/completions", openai_views.chat_completions, name="openai-chat-completions"),
    path("v1/models", openai_views.model_list, name="openai-models"),
    # The Anthropic Messages front door (aigen.edge.messages): base URL <host> for the anthropic SDK.
    path("v1/messages", anthropic_messages.messages, name="anthropic-messages"),
    path("v1/messages/count_tokens", anthropic_messages.count_tokens, name="anthropic-count-tokens"),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("admin/", admin.site.urls),
    path("dashboard/", dashboard.dashboard, name="resilience-dashboard"),
    path("dashboard/data", dashboard.dashboard_data, name="resilience-dashboard-data"),
    *upstream_dashboard.dashboard_urls(),  # the per-upstream pages
    path("api/ai/", include("aigen.urls")),
    path("api/resilience/", include("resilience.urls")),
    # Public: the schema and its docs describe the API, they expose no data.
    path("api/schema/", SchemaView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("metrics", metrics.metrics_view, name="metrics"),
    # Browsers ask for it on every page: without it each visit logged a 404
    # (and the demo's traffic table showed them). Permanent: asked once.
    path("favicon.ico", RedirectView.as_view(url=static("resilience/favicon.ico"), permanent=True)),
]
# The flaky demo upstream: only with DEBUG or RESILIENCE["DEMO_ENABLED"] (never in production).
urlpatterns += demo.demo_urls()
# Last: /api/ paths no route matched (a trailing slash either way; else a JSON 404).
# [\s\S]: a path may carry a decoded CR/LF (%0d%0a), which "." does not match.
urlpatterns += [re_path(r"^api(?:/(?P<path>[\s\S]*))?$", api_route_fallback, name="api-fallback")]

# Errors Django answers itself, in the route's shape under /v1 and /api (project.errors).
handler400 = "project.errors.bad_request"
handler403 = "project.errors.permission_denied"
handler404 = "project.errors.page_not_found"
handler500 = "project.errors.server_error"
