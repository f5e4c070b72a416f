"""Root URL configuration."""
from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from resilience import dashboard, demo, health
from resilience.telemetry import metrics

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("admin/", admin.site.urls),
    path("dashboard/", dashboard.dashboard, name="resilience-dashboard"),
    path("dashboard/data", dashboard.dashboard_data, name="resilience-dashboard-data"),
    path("api/ai/", include("aigen.urls")),
    path("api/resilience/", include("resilience.urls")),
    # Public: the schema and its docs describe the API, they expose no data.
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("metrics", metrics.metrics_view, name="metrics"),
]
# The flaky demo upstream: only with DEBUG or RESILIENCE["DEMO_ENABLED"] (never in production).
urlpatterns += demo.demo_urls()

# Under /api/ an unmatched route answers the API's JSON error, never an HTML page.
handler404 = "resilience.api.not_found"
