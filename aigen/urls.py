"""Routes of the AI generation API; the project mounts them at /api/ai/."""
from __future__ import annotations

from django.urls import path

from aigen.edge import api, generate, jobs, usage

app_name = "aigen"

# /generate is an async view (aigen.edge.generate): its DRF class documents it
# for the schema and it is declared slow by design where it is defined.
urlpatterns = [
    path("generate", generate.generate, name="generate"),
    path("templates", api.TemplatesView.as_view(), name="templates"),
    path("cache/stats", api.CacheStatsView.as_view(), name="cache-stats"),
    path("cache", api.CacheClearView.as_view(), name="cache"),
    path("usage", usage.UsageView.as_view(), name="usage"),
    path("jobs", jobs.JobsView.as_view(), name="jobs"),
    path("jobs/<str:job_id>", jobs.JobView.as_view(), name="job"),
]
