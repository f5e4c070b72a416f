"""The AI generation REST API (mounted at /api/ai/):

    POST   generate       template + section + data -> content (cached; SSE with "stream": true)
    GET    templates      the registry with each section's fields
    GET    cache/stats    AI cache statistics
    DELETE cache          clear cached AI answers (change_upstream; optional template_id)

Authentication is the project's; every error is the project's shape,
`{"success": false, "error": {"code", "message", ...}}`, rendered by
aigen.edge.errors (DRF's errors mapped as resilience.ops.api maps them).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.http import HttpResponse
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from aigen.edge.errors import api_exception_handler, sse
from aigen.generation.registry import get_registry
from aigen.generation.selectors import ai_cache_stats, template_list
from resilience.cache.ops import cache_clear
from resilience.ops.parsers import LimitedJSONParser
from resilience.ops.permissions import UpstreamOperate
from resilience.ops.serializers import error_responses


class EventStreamRenderer(BaseRenderer):
    """Lets clients that accept only text/event-stream through content
    negotiation; errors reach them as one `error` event."""

    media_type = "text/event-stream"
    format = "sse"
    charset = "utf-8"

    def render(self, data: Any, accepted_media_type: str | None = None,
               renderer_context: Any = None) -> bytes:
        if data is None:
            return b""
        event = "error" if isinstance(data, dict) and data.get("success") is False else "message"
        return sse(event, data)


class GenerateRequestSerializer(serializers.Serializer):
    """The generate request body, for the API schema (validated by
    `aigen.generation.request.GenerationRequest.from_body`)."""

    template_id = serializers.CharField(max_length=64)
    section_id = serializers.CharField(max_length=64)
    data = serializers.DictField(help_text="The section's fields, see GET /api/ai/templates.")
    use_cache = serializers.BooleanField(default=True,
                                         help_text="false: ask the provider and refresh the cache.")
    stream = serializers.BooleanField(default=False, help_text="true: answer with server-sent events.")


class UsageSerializer(serializers.Serializer):
    prompt_tokens = serializers.IntegerField(allow_null=True)
    completion_tokens = serializers.IntegerField(allow_null=True)
    total_tokens = serializers.IntegerField(allow_null=True)


class GenerateResponseSerializer(serializers.Serializer):
    success = serializers.BooleanField()
    content = serializers.CharField()
    section_title = serializers.CharField()
    cached = serializers.BooleanField()
    template_id = serializers.CharField()
    section_id = serializers.CharField()
    provider = serializers.CharField()
    model = serializers.CharField()
    usage = UsageSerializer()
    latency_ms = serializers.IntegerField()


class AigenView(APIView):
    """Every DRF view under /api/ai/: bodies through the shared parser, errors
    through aigen.edge.errors (the project's shape, as every /api/ route)."""

    parser_classes = [LimitedJSONParser]

    def get_exception_handler(self) -> Callable[[Exception, dict[str, Any]], HttpResponse]:
        return api_exception_handler


class TemplatesView(AigenView):
    @extend_schema(summary="The template registry", responses={200: inline_serializer(
        "TemplateList", {"success": serializers.BooleanField(), "templates": serializers.ListField(),
                         "provider": serializers.CharField(), "model": serializers.CharField()})})
    def get(self, request: Request) -> Response:
        return Response({"success": True, **template_list()})


class CacheStatsView(AigenView):
    @extend_schema(summary="AI cache statistics", responses={200: inline_serializer(
        "AICacheStats", {"success": serializers.BooleanField(), "stats": inline_serializer("AICacheCounts", {
            **{name: serializers.IntegerField() for name in (
                "hits", "misses", "sets", "deletes", "errors", "fallbacks", "total_requests")},
            "hit_rate": serializers.CharField(help_text='hits / total_requests as a percentage, "75.00%".'),
            "hit_ratio": serializers.FloatField(help_text="hits / total_requests, 0..1.")}),
                         "backend": serializers.CharField(), "fallback": serializers.BooleanField(),
                         "scope": serializers.CharField()})})
    def get(self, request: Request) -> Response:
        return Response({"success": True, **ai_cache_stats()})


class CacheClearView(AigenView):
    # The AI answers are the provider upstream's cached responses: clearing
    # them needs what the admin's Clear cache button needs.
    permission_classes = [UpstreamOperate]

    @extend_schema(
        summary="Clear cached AI answers (change_upstream)",
        parameters=[OpenApiParameter("template_id", str, description="Only this template's answers.")],
        responses={200: inline_serializer("AICacheCleared", {
            "success": serializers.BooleanField(), "deleted": serializers.IntegerField(),
            "template_id": serializers.CharField(allow_null=True)}),
            **error_responses(401, 403, 404, e404="Unknown template (`template_not_found`).")},
    )
    def delete(self, request: Request) -> Response:
        template_id = request.query_params.get("template_id")
        if template_id is None and isinstance(request.data, dict):
            template_id = request.data.get("template_id")
        if template_id is not None:
            template_id = get_registry().template(str(template_id)).id  # 404 when unknown
        pattern = f"{template_id}:*" if template_id else "*"
        deleted = cache_clear(namespaces=["ai"], pattern=pattern)["ai"]
        return Response({"success": True, "deleted": deleted, "namespace": "ai", "template_id": template_id})
