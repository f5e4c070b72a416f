"""The advisor's API (routes in resilience.urls, under /api/resilience/):

    GET  findings                          every upstream's findings and suggestions (view_suggestion)
    GET  upstreams/{name}/findings         one upstream's (view_suggestion)
    POST suggestions/{id}/dismiss          (change_suggestion)
    POST suggestions/{id}/apply|rollback   (change_suggestion and change_upstream: a policy change)
    POST benchmarks                        queue a bounded benchmark job (change_upstream) -> 202
    GET  benchmarks/{id}                   its status and report (view_job)
    GET  resources                         per-process resources, pools, bulkheads (staff)

Permissions are the admin's for the same action (resilience.ops.permissions).

Views stay thin: resilience.advisor.services, .benchmark and .resources do
the work. Errors use the project's JSON shape.
"""
from __future__ import annotations

from typing import Any

from django.urls import reverse
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import IsAdminUser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from resilience import exceptions as errors
from resilience.advisor import benchmark, resources, services
from resilience.advisor.conf import advisor_settings
from resilience.advisor.models import Suggestion
from resilience.models import Upstream
from resilience.ops.permissions import (
    JobRead,
    SuggestionApply,
    SuggestionDecide,
    SuggestionRead,
    UpstreamOperate,
)
from resilience.ops.serializers import ErrorResponseSerializer, error_responses
from resilience.telemetry.calllog import call_log_flush

NAME = OpenApiParameter("name", str, OpenApiParameter.PATH, description="The upstream's name (a slug).")
ID = OpenApiParameter("suggestion_id", int, OpenApiParameter.PATH, description="The suggestion's id.")


class ProposalSerializer(serializers.Serializer):
    field = serializers.CharField()
    from_value = serializers.JSONField()
    to_value = serializers.JSONField()
    expected = serializers.CharField()


class FindingSerializer(serializers.Serializer):
    kind = serializers.CharField()
    upstream = serializers.CharField()
    endpoint = serializers.CharField()
    severity = serializers.ChoiceField(["info", "warning", "critical"])
    title = serializers.CharField()
    evidence = serializers.JSONField(help_text="figures, windows, threshold")
    proposal = ProposalSerializer(allow_null=True)


class SuggestionSerializer(serializers.ModelSerializer):
    class Meta:
        model = Suggestion
        fields = ("id", "upstream", "endpoint", "kind", "severity", "field", "from_value", "to_value",
                  "expected", "evidence", "status", "created_at", "updated_at", "decided_at", "history_id",
                  "effect")


class FindingsResponseSerializer(serializers.Serializer):
    success = serializers.BooleanField()
    generated_at = serializers.DateTimeField()
    findings = FindingSerializer(many=True)
    suggestions = SuggestionSerializer(many=True)


SuggestionResponse = inline_serializer("SuggestionResponse", {"success": serializers.BooleanField(),
                                                              "suggestion": SuggestionSerializer()})


def _findings_body(result: dict[str, Any]) -> dict[str, Any]:
    return FindingsResponseSerializer({
        "success": True, "generated_at": result["generated_at"],
        "findings": [f.as_dict() for f in result["findings"]], "suggestions": result["suggestions"]}).data


class FindingsQuerySerializer(serializers.Serializer):
    by = serializers.ChoiceField(["upstream", "endpoint"], default="upstream", help_text=(
        "upstream: one verdict per upstream; endpoint: per (upstream, endpoint) the rollups know."))


def _by_endpoint(request: Request) -> bool:
    query = FindingsQuerySerializer(data=request.query_params)
    query.is_valid(raise_exception=True)
    return query.validated_data["by"] == "endpoint"


class FindingsView(APIView):
    permission_classes = [SuggestionRead]

    @extend_schema(operation_id="resilience_findings_list", parameters=[FindingsQuerySerializer],
                   summary="Every upstream's findings (with evidence) and the advisor's suggestions",
                   responses={200: FindingsResponseSerializer, **error_responses(400, 401, 403)})
    def get(self, request: Request) -> Response:
        by_endpoint = _by_endpoint(request)
        call_log_flush()
        return Response(_findings_body(services.advisor_run(by_endpoint=by_endpoint)))


class UpstreamFindingsView(APIView):
    permission_classes = [SuggestionRead]

    @extend_schema(operation_id="resilience_upstreams_findings_list",
                   parameters=[NAME, FindingsQuerySerializer],
                   summary="One upstream's findings and suggestions",
                   responses={200: FindingsResponseSerializer, **error_responses(400, 401, 403, 404)})
    def get(self, request: Request, name: str) -> Response:
        by_endpoint = _by_endpoint(request)
        if not Upstream.objects.filter(name=name).exists():
            raise errors.UnknownUpstream(f"no upstream named {name!r}", upstream=name)
        call_log_flush()
        return Response(_findings_body(services.advisor_run(names=[name], by_endpoint=by_endpoint)))


class _SuggestionAction(APIView):
    permission_classes = [SuggestionApply]
    operation: Any = None

    def post(self, request: Request, suggestion_id: int) -> Response:
        row = type(self).operation(suggestion_id=suggestion_id, user=request.user)
        return Response({"success": True, "suggestion": SuggestionSerializer(row).data})


_ACTION_ERRORS = {
    **error_responses(401, 403, 404, e404="No such suggestion (`suggestion_not_found`)."),
    409: OpenApiResponse(ErrorResponseSerializer, description=(
        "Not open (or not applied, for rollback), or the policy field changed since it was proposed "
        "(`suggestion_conflict`)."))}


class SuggestionApplyView(_SuggestionAction):
    operation = staticmethod(services.suggestion_apply)

    @extend_schema(operation_id="resilience_suggestions_apply", parameters=[ID], request=None,
                   summary=("Apply a suggestion: a normal policy change, with history "
                            "(change_suggestion, change_upstream)"),
                   responses={200: SuggestionResponse, **_ACTION_ERRORS})
    def post(self, request: Request, suggestion_id: int) -> Response:
        return super().post(request, suggestion_id)


class SuggestionDismissView(_SuggestionAction):
    permission_classes = [SuggestionDecide]
    operation = staticmethod(services.suggestion_dismiss)

    @extend_schema(operation_id="resilience_suggestions_dismiss", parameters=[ID], request=None,
                   summary="Dismiss a suggestion (not proposed again for DISMISS_DAYS) (change_suggestion)",
                   responses={200: SuggestionResponse, **_ACTION_ERRORS})
    def post(self, request: Request, suggestion_id: int) -> Response:
        return super().post(request, suggestion_id)


class SuggestionRollbackView(_SuggestionAction):
    operation = staticmethod(services.suggestion_rollback)

    @extend_schema(operation_id="resilience_suggestions_rollback", parameters=[ID], request=None,
                   summary=("Put back the value an applied suggestion replaced "
                            "(change_suggestion, change_upstream)"),
                   responses={200: SuggestionResponse, **_ACTION_ERRORS})
    def post(self, request: Request, suggestion_id: int) -> Response:
        return super().post(request, suggestion_id)


class BenchmarkRequestSerializer(serializers.Serializer):
    upstream = serializers.SlugField(max_length=64)
    path = serializers.CharField(max_length=500, default="/")
    requests = serializers.IntegerField(min_value=1, default=100)
    concurrency = serializers.IntegerField(min_value=1, default=4)

    def validate_requests(self, value: int) -> int:
        top = advisor_settings.BENCHMARK_MAX_REQUESTS
        if value > top:
            raise serializers.ValidationError(f"At most {top}.")
        return value

    def validate_concurrency(self, value: int) -> int:
        top = advisor_settings.BENCHMARK_MAX_CONCURRENCY
        if value > top:
            raise serializers.ValidationError(f"At most {top}.")
        return value


BenchmarkJob = inline_serializer("BenchmarkJob", {
    "id": serializers.UUIDField(), "status": serializers.CharField(), "args": serializers.JSONField(),
    "created_at": serializers.DateTimeField(), "finished_at": serializers.DateTimeField(allow_null=True),
    "report": serializers.JSONField(allow_null=True, help_text="When done: the benchmark's report."),
    "error": serializers.JSONField(allow_null=True), "status_url": serializers.CharField()})
BenchmarkResponse = inline_serializer("BenchmarkResponse", {"success": serializers.BooleanField(),
                                                            "job": BenchmarkJob})


def _job_body(request: Request, row: Any) -> dict[str, Any]:
    return {"success": True, "job": {
        "id": str(row.pk), "status": row.status, "args": row.args, "created_at": row.created_at,
        "finished_at": row.finished_at, "report": row.result, "error": row.error,
        "status_url": request.build_absolute_uri(reverse("resilience-api:benchmark", args=[row.pk]))}}


class BenchmarksView(APIView):
    permission_classes = [UpstreamOperate]

    @extend_schema(operation_id="resilience_benchmarks_create", request=BenchmarkRequestSerializer,
                   summary="Queue a benchmark of an upstream through the resilient client (change_upstream)",
                   description="Bounded: `requests` <= BENCHMARK_MAX_REQUESTS, `concurrency` <= "
                               "BENCHMARK_MAX_CONCURRENCY. The report is kept as the job's result.",
                   responses={202: OpenApiResponse(BenchmarkResponse, description="Queued; poll status_url."),
                              **error_responses(400, 401, 403, 404)})
    def post(self, request: Request) -> Response:
        body = BenchmarkRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        row = benchmark.benchmark_enqueue(**body.validated_data, user=request.user)
        data = _job_body(request, row)
        return Response(data, status=202, headers={"Location": data["job"]["status_url"]})


class BenchmarkView(APIView):
    permission_classes = [JobRead]

    @extend_schema(operation_id="resilience_benchmarks_retrieve",
                   parameters=[OpenApiParameter("job_id", str, OpenApiParameter.PATH)],
                   summary="A queued benchmark's status and report (view_job)",
                   responses={200: BenchmarkResponse, **error_responses(401, 403, 404)})
    def get(self, request: Request, job_id: str) -> Response:
        return Response(_job_body(request, benchmark.benchmark_job_get(job_id=job_id)))


class ResourcesView(APIView):
    permission_classes = [IsAdminUser]

    @extend_schema(operation_id="resilience_resources",
                   summary="Per worker process: RSS, CPU, threads, DB and Redis connections, upstream "
                           "pools and bulkheads (staff)",
                   responses={200: inline_serializer("ResourcesResponse", {
                       "success": serializers.BooleanField(), "processes": serializers.JSONField(),
                       "totals": serializers.JSONField()}), **error_responses(401, 403)})
    def get(self, request: Request) -> Response:
        return Response({"success": True, **resources.resources_view()})
