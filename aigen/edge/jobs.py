"""Queued generation API (mounted at /api/ai/):

    POST jobs         the generate body (+ "priority": low|normal|high) -> 202, job id, status URL
    GET  jobs/{id}    queued / running / done (result = generate's body) / failed (error object)

Only the owner (or staff) sees a job; anyone else gets the same 404 as for a
missing one. High priority is for staff (403 `priority_forbidden`). A caller
with an API token past its requests per minute or token budget gets the 429
`POST /api/ai/generate` answers (`rate_limit_exceeded`, `insufficient_quota`,
with Retry-After); the job is billed to that budget and ledgered when it
runs (aigen.generation.tasks).
"""
from __future__ import annotations

from django.urls import reverse
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from aigen.edge.api import AigenView, GenerateRequestSerializer, GenerateResponseSerializer
from aigen.edge.throttling import GenerateThrottle
from aigen.edge.tokens import token_of
from aigen.generation.tasks import generation_job_get, generation_job_submit, generation_job_view
from resilience.ops.serializers import ErrorDetailSerializer, error_responses


class JobRequestSerializer(GenerateRequestSerializer):
    priority = serializers.ChoiceField(["low", "normal", "high"], default="normal",
                                       help_text="high: staff only.")


class JobSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    status = serializers.ChoiceField(["queued", "running", "done", "failed"])
    priority = serializers.ChoiceField(["low", "normal", "high"])
    attempts = serializers.IntegerField()
    max_attempts = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    result = GenerateResponseSerializer(allow_null=True, help_text="When done: generate's response body.")
    error = ErrorDetailSerializer(allow_null=True, help_text=(
        "When failed (or while a retry waits): the error object generate would have answered."))
    error_status = serializers.IntegerField(allow_null=True, help_text="When failed: generate's HTTP status.")
    status_url = serializers.CharField()


JobResponse = inline_serializer("JobResponse", {"success": serializers.BooleanField(),
                                                "job": JobSerializer()})


def _body(request: Request, row) -> dict:
    view = generation_job_view(row)
    view["status_url"] = request.build_absolute_uri(reverse("aigen:job", args=[row.pk]))
    return {"success": True, "job": view}


class JobsView(AigenView):
    throttle_classes = [GenerateThrottle]

    @extend_schema(
        request=JobRequestSerializer,
        responses={202: OpenApiResponse(JobResponse, description="Queued; poll `job.status_url`."),
                   **error_responses(400, 403, 404, 429,
                                     e403="High priority asked by a non-staff user (`priority_forbidden`).",
                                     e404="Unknown template or section.",
                                     e429="Throttled, or past the API token's requests per minute "
                                          "(`rate_limit_exceeded`) or token budget (`insufficient_quota`); "
                                          "see `Retry-After`.")},
        summary="Queue a generation",
    )
    def post(self, request: Request) -> Response:
        row = generation_job_submit(body=request.data, user=request.user, token=token_of(request.user))
        body = _body(request, row)
        return Response(body, status=202, headers={"Location": body["job"]["status_url"]})


class JobView(AigenView):
    @extend_schema(responses={200: JobResponse, **error_responses(
        404, e404="No such job, or not yours (`job_not_found`).")}, summary="A queued generation's status")
    def get(self, request: Request, job_id: str) -> Response:
        return Response(_body(request, generation_job_get(job_id=job_id, user=request.user)))
