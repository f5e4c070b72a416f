"""Routes of the operations API; the project mounts them at /api/resilience/."""
from django.urls import path

from resilience import api_views as views

app_name = "resilience-api"

urlpatterns = [
    path("upstreams", views.UpstreamListView.as_view(), name="upstream-list"),
    path("upstreams/<slug:name>", views.UpstreamDetailView.as_view(), name="upstream-detail"),
    path("upstreams/<slug:name>/calls", views.UpstreamCallsView.as_view(), name="upstream-calls"),
    path("upstreams/<slug:name>/breaker/reset", views.BreakerResetView.as_view(), name="breaker-reset"),
    path("upstreams/<slug:name>/probe", views.ProbeView.as_view(), name="upstream-probe"),
    path("upstreams/<slug:name>/cache", views.UpstreamCacheView.as_view(), name="upstream-cache"),
    path("cache/stats", views.CacheStatsView.as_view(), name="cache-stats"),
]
