"""Routes of the operations API; the project mounts them at /api/resilience/."""
from django.urls import path

from resilience.advisor import views as advisor
from resilience.alerts import views as alerts
from resilience.ops import breakers, views

app_name = "resilience-api"

urlpatterns = [
    path("upstreams", views.UpstreamListView.as_view(), name="upstream-list"),
    path("upstreams/<slug:name>", views.UpstreamDetailView.as_view(), name="upstream-detail"),
    path("upstreams/<slug:name>/calls", views.UpstreamCallsView.as_view(), name="upstream-calls"),
    path("upstreams/<slug:name>/breaker/reset", views.BreakerResetView.as_view(), name="breaker-reset"),
    path("upstreams/<slug:name>/probe", views.ProbeView.as_view(), name="upstream-probe"),
    path("upstreams/<slug:name>/cache", views.UpstreamCacheView.as_view(), name="upstream-cache"),
    path("upstreams/<slug:name>/breakers", breakers.BreakersView.as_view(), name="breakers"),
    path("upstreams/<slug:name>/breakers/reset", breakers.BreakersResetView.as_view(), name="breakers-reset"),
    path("upstreams/<slug:name>/breakers/open", breakers.BreakersOpenView.as_view(), name="breakers-open"),
    path("cache/stats", views.CacheStatsView.as_view(), name="cache-stats"),
    # Alerts (resilience.alerts.views).
    path("alerts", alerts.AlertsView.as_view(), name="alerts"),
    path("alerts/silences", alerts.SilencesView.as_view(), name="silences"),
    path("alerts/silences/<int:silence_id>/end", alerts.SilenceEndView.as_view(), name="silence-end"),
    # The advisor (resilience.advisor.views).
    path("findings", advisor.FindingsView.as_view(), name="findings"),
    path("upstreams/<slug:name>/findings", advisor.UpstreamFindingsView.as_view(), name="upstream-findings"),
    path("suggestions/<int:suggestion_id>/apply", advisor.SuggestionApplyView.as_view(),
         name="suggestion-apply"),
    path("suggestions/<int:suggestion_id>/dismiss", advisor.SuggestionDismissView.as_view(),
         name="suggestion-dismiss"),
    path("suggestions/<int:suggestion_id>/rollback", advisor.SuggestionRollbackView.as_view(),
         name="suggestion-rollback"),
    path("benchmarks", advisor.BenchmarksView.as_view(), name="benchmarks"),
    path("benchmarks/<str:job_id>", advisor.BenchmarkView.as_view(), name="benchmark"),
    path("resources", advisor.ResourcesView.as_view(), name="resources"),
]
