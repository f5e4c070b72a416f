"""The per-upstream dashboard page (/dashboard/upstreams/<name>) and its data.

The page is for staff with an admin session and view permission on
upstreams and call logs (anyone else goes to the admin login, or gets 403);
it arrives with its data, and its script (upstream.js, drawing with the
vendored uPlot) refreshes it from the data endpoint. The data endpoint is
a DRF view: the same users read it with a session or with a Bearer token as
the rest of the API, and its errors have the API's JSON shape (400 naming `range`, 404
for an unknown upstream). What is read and what it costs:
resilience.telemetry.detail.
"""
from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth.decorators import permission_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from resilience.exceptions import UnknownUpstream
from resilience.models import Upstream
from resilience.ops.permissions import DASHBOARD_READ, CallLogRead, UpstreamRead
from resilience.ops.serializers import error_responses
from resilience.telemetry.calllog import call_log_flush
from resilience.telemetry.detail import DEFAULT_RANGE, RANGES, Range, upstream_detail

#: Seconds between the page's refreshes, per range (long ranges change slowly).
REFRESH_SECONDS = {"15m": 5, "1h": 10, "24h": 60, "7d": 300}


def _range(key: str | None) -> Range | None:
    return RANGES.get(key or DEFAULT_RANGE)


@require_GET
@never_cache
@staff_member_required
@permission_required(DASHBOARD_READ, raise_exception=True)
def upstream_page(request: HttpRequest, name: str) -> HttpResponse:
    upstream = Upstream.objects.filter(name=name).first()
    if upstream is None:
        raise Http404(f"no upstream named {name!r}")
    chosen = _range(request.GET.get("range")) or RANGES[DEFAULT_RANGE]
    call_log_flush()
    detail = upstream_detail(upstream=upstream, span=chosen)
    context = {
        **admin.site.each_context(request),
        "title": f"Upstream {upstream.name}",
        "upstream": upstream,
        "detail": detail,
        "ranges": list(RANGES.values()),
        "chosen": chosen,
        "refresh_seconds": REFRESH_SECONDS[chosen.key],
    }
    return render(request, "resilience/upstream.html", context)


class UpstreamDashboardDataView(APIView):
    """The per-upstream page's data: series, breaker bands, recent failures
    (call-log rows): view permission on upstreams and on call logs."""

    permission_classes = [UpstreamRead, CallLogRead]

    @extend_schema(parameters=[OpenApiParameter("range", str, enum=list(RANGES),
                                                description=f"Time range (default {DEFAULT_RANGE}).")],
                   responses={200: dict, **error_responses(400, 401, 403, 404)})
    def get(self, request: Request, name: str) -> Response:
        chosen = _range(request.query_params.get("range"))
        if chosen is None:
            raise exceptions.ValidationError({"range": [f"One of {', '.join(RANGES)}."]})
        upstream = Upstream.objects.filter(name=name).first()
        if upstream is None:
            raise UnknownUpstream(f"no upstream named {name!r}", upstream=name)
        call_log_flush()
        response = Response(upstream_detail(upstream=upstream, span=chosen))
        response["Cache-Control"] = "no-store"
        return response


upstream_page_data = UpstreamDashboardDataView.as_view()


def dashboard_urls() -> list[Any]:
    from django.urls import path

    # The page's data is an API route (a JSON 404 for a name no route matches,
    # like every /api/ path): /api/resilience/upstreams/<name>/dashboard.
    return [
        path("dashboard/upstreams/<slug:name>", upstream_page, name="resilience-dashboard-upstream"),
        path("api/resilience/upstreams/<slug:name>/dashboard", upstream_page_data,
             name="resilience-dashboard-upstream-data"),
    ]
