"""The operations REST API (mounted at /api/resilience/, routes in
resilience.urls): upstreams with their live breaker and statistics, the call
log, breaker reset, probe and cache control, cache statistics.

Views stay thin: reads go through resilience.telemetry.selectors (after flushing this
process's buffered call logs, so calls made a moment ago count), writes
through resilience.ops.services. Each route asks the model permission the admin
asks for the same page or button (resilience.ops.permissions): policies need
view_upstream, breaker reset, probe and cache clear change_upstream; call
logs view_calllog, without which a caller sees the calls made for it only
(its API requests, its jobs); cache statistics any authenticated caller. Errors use the
project's shape (resilience.ops.api); an unknown upstream is a 404
`unknown_upstream`.
"""
from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.generics import ListAPIView
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from resilience import exceptions as errors
from resilience.cache.ops import cache_stats
from resilience.client.endpoints import snapshot
from resilience.models import CallLog, Upstream
from resilience.ops import serializers as s
from resilience.ops.permissions import CALLLOG_VIEW, UpstreamOperate, UpstreamRead, admin_allows
from resilience.ops.services import breaker_reset, upstream_cache_clear, upstream_probe
from resilience.telemetry.calllog import call_log_flush
from resilience.telemetry.selectors import (
    WINDOWS,
    breaker_status,
    call_logs,
    recent_failures,
    upstream_overview,
    upstream_stats,
)

RECENT_FAILURES = 10

NAME = OpenApiParameter("name", str, OpenApiParameter.PATH, description="The upstream's name (a slug).")


def _upstream(name: str) -> Upstream:
    try:
        return Upstream.objects.get(name=name)
    except Upstream.DoesNotExist:
        raise errors.UnknownUpstream(f"no upstream named {name!r}", upstream=name) from None


def sampling_note(upstream: Upstream) -> dict[str, Any]:
    """What the call log holds of upstream's calls (the calls endpoint says it)."""
    rate = upstream.log_sample_rate
    if rate >= 1:
        note = "Every call has a row."
    else:
        note = (f"Failed, retried, stale and rejected calls all have rows; successful calls are sampled: "
                f"{rate:.2%} of them keep a row. Statistics count every call.")
    return {"success_sample_rate": rate, "note": note}


class CallLogPagination(PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500
    #: Set by the view: what share of the calls the log holds.
    sampling: dict[str, Any] | None = None

    def get_paginated_response(self, data: Any) -> Response:
        response = super().get_paginated_response(data)
        response.data = {"success": True, "sampling": self.sampling, **response.data}
        return response

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        paginated = super().get_paginated_response_schema(schema)
        paginated["properties"] = {
            "success": {"type": "boolean"},
            "sampling": {"type": "object", "description": "Successful calls are sampled: at what rate.",
                         "properties": {"success_sample_rate": {"type": "number"},
                                        "note": {"type": "string"}}},
            **paginated["properties"]}
        paginated["required"] = ["success", "sampling", *paginated.get("required", [])]
        return paginated


class UpstreamListView(APIView):
    permission_classes = [UpstreamRead]

    @extend_schema(
        operation_id="resilience_upstreams_list",
        summary="Every upstream: policy summary, live breaker, the last 5 minutes (view_upstream)",
        responses={200: s.UpstreamListResponseSerializer, **s.error_responses(401, 403)},
    )
    def get(self, request: Request) -> Response:
        call_log_flush()
        items = [{**upstream_overview(upstream, window=WINDOWS["5m"]), "policy": upstream}
                 for upstream in Upstream.objects.prefetch_related("endpoints")]
        return Response(s.UpstreamListResponseSerializer({"success": True, "upstreams": items}).data)


class UpstreamDetailView(APIView):
    permission_classes = [UpstreamRead]

    @extend_schema(
        operation_id="resilience_upstreams_retrieve",
        summary="One upstream: full policy, statistics per window, recent failures (view_upstream)",
        parameters=[NAME],
        responses={200: s.UpstreamDetailResponseSerializer, **s.error_responses(401, 403, 404)},
    )
    def get(self, request: Request, name: str) -> Response:
        upstream = _upstream(name)
        call_log_flush()
        data = {
            "success": True,
            "upstream": upstream,
            "breaker": breaker_status(upstream),
            "pool": snapshot(upstream),
            "stats": {label: upstream_stats(name=name, window=window) for label, window in WINDOWS.items()},
            "recent_failures": list(recent_failures(name=name, limit=RECENT_FAILURES)),
        }
        return Response(s.UpstreamDetailResponseSerializer(data).data)


class UpstreamCallsView(ListAPIView):
    # Any caller; one without view permission on call logs sees its own calls only.
    serializer_class = s.CallLogSerializer
    pagination_class = CallLogPagination

    @extend_schema(
        operation_id="resilience_upstreams_calls_list",
        summary="The upstream's call log, newest first (view_calllog; without it, your own calls)",
        description=("Every failed, retried, stale or rejected call has a row; successful calls are sampled "
                     "at the upstream's `log_sample_rate` (`sampling` in the response says at what rate). "
                     "The statistics count every call."),
        parameters=[NAME, s.CallLogFilterSerializer],
        responses={200: s.CallLogSerializer(many=True),
                   **s.error_responses(400, 401, 404, e404="Unknown upstream or page out of range.")},
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)

    def get_queryset(self) -> QuerySet[CallLog]:
        if getattr(self, "swagger_fake_view", False):  # schema generation
            return CallLog.objects.none()
        row = _upstream(self.kwargs["name"])
        filters = s.CallLogFilterSerializer(data=self.request.query_params)
        filters.is_valid(raise_exception=True)
        self.paginator.sampling = sampling_note(row)
        call_log_flush()
        user = self.request.user
        caller = None if admin_allows(user, CALLLOG_VIEW) else user.pk
        return call_logs(name=row.name, caller=caller, **filters.validated_data)


class BreakerResetView(APIView):
    permission_classes = [UpstreamOperate]

    @extend_schema(
        operation_id="resilience_upstreams_breaker_reset",
        summary="Close the upstream's circuit breaker now (change_upstream)",
        parameters=[NAME], request=None,
        responses={200: s.BreakerResetResponseSerializer, **s.error_responses(401, 403, 404)},
    )
    def post(self, request: Request, name: str) -> Response:
        status = breaker_reset(name=name, by=request.user.get_username())
        return Response(s.BreakerResetResponseSerializer(
            {"success": True, "upstream": name, "breaker": status}).data)


class ProbeView(APIView):
    permission_classes = [UpstreamOperate]

    @extend_schema(
        operation_id="resilience_upstreams_probe",
        summary="One real call to the upstream's health path (change_upstream)",
        description=("Bypasses the response cache but not the breaker. A failed probe is still a 200: "
                     "`probe.ok` is false and `probe.error` says why."),
        parameters=[NAME], request=None,
        responses={200: s.ProbeResponseSerializer, **s.error_responses(401, 403, 404)},
    )
    def post(self, request: Request, name: str) -> Response:
        upstream = _upstream(name)
        result = upstream_probe(name=name)
        return Response(s.ProbeResponseSerializer({
            "success": True, "upstream": name, "path": upstream.health_path or "/", "probe": result}).data)


class UpstreamCacheView(APIView):
    permission_classes = [UpstreamOperate]

    @extend_schema(
        operation_id="resilience_upstreams_cache_clear",
        summary="Remove the upstream's cached responses (change_upstream)",
        parameters=[NAME], request=None,
        responses={200: s.CacheClearedResponseSerializer, **s.error_responses(401, 403, 404)},
    )
    def delete(self, request: Request, name: str) -> Response:
        deleted = upstream_cache_clear(name=name)
        return Response(s.CacheClearedResponseSerializer(
            {"success": True, "upstream": name, "deleted": deleted}).data)


class CacheStatsView(APIView):
    @extend_schema(
        operation_id="resilience_cache_stats",
        summary="The cache backend's statistics, across workers while Redis is up",
        responses={200: s.CacheStatsResponseSerializer, **s.error_responses(401)},
    )
    def get(self, request: Request) -> Response:
        return Response(s.CacheStatsResponseSerializer({"success": True, **cache_stats()}).data)
