"""Routes of the AI generation API; the project mounts them at /api/ai/."""
from django.urls import path

from aigen.edge import api, generate, jobs

app_name = "aigen"

# The async view serves the route; DRF's view class describes it to the schema
# generator, which finds a view's class as DRF's as_view() leaves it (`cls`).
generate.generate.cls = api.GenerateView
generate.generate.initkwargs = {}
# Generations take seconds by design: not "slow requests" (resilience.middleware).
generate.generate.slow_expected = True

urlpatterns = [
    path("generate", generate.generate, name="generate"),
    path("templates", api.TemplatesView.as_view(), name="templates"),
    path("cache/stats", api.CacheStatsView.as_view(), name="cache-stats"),
    path("cache", api.CacheClearView.as_view(), name="cache"),
    path("jobs", jobs.JobsView.as_view(), name="jobs"),
    path("jobs/<str:job_id>", jobs.JobView.as_view(), name="job"),
]
