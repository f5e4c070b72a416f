"""Routes of the AI generation API; the project mounts them at /api/ai/."""
from django.urls import path

from aigen import api, jobs_api

app_name = "aigen"

urlpatterns = [
    path("generate", api.GenerateView.as_view(), name="generate"),
    path("templates", api.TemplatesView.as_view(), name="templates"),
    path("cache/stats", api.CacheStatsView.as_view(), name="cache-stats"),
    path("cache", api.CacheClearView.as_view(), name="cache"),
    path("jobs", jobs_api.JobsView.as_view(), name="jobs"),
    path("jobs/<str:job_id>", jobs_api.JobView.as_view(), name="job"),
]
