"""Routes of the AI generation API; the project mounts them at /api/ai/."""
from django.urls import path

from aigen import api, async_views, jobs_api

app_name = "aigen"

# The async view serves the route; DRF's view class describes it to the schema
# generator, which finds a view's class as DRF's as_view() leaves it (`cls`).
async_views.generate.cls = api.GenerateView
async_views.generate.initkwargs = {}
# Generations take seconds by design: not "slow requests" (resilience.ops.middleware).
async_views.generate.slow_expected = True

urlpatterns = [
    path("generate", async_views.generate, name="generate"),
    path("templates", api.TemplatesView.as_view(), name="templates"),
    path("cache/stats", api.CacheStatsView.as_view(), name="cache-stats"),
    path("cache", api.CacheClearView.as_view(), name="cache"),
    path("jobs", jobs_api.JobsView.as_view(), name="jobs"),
    path("jobs/<str:job_id>", jobs_api.JobView.as_view(), name="job"),
]
