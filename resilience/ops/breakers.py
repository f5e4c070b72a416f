"""Breaker controls (routes in resilience.urls, under /api/resilience/):

    GET  upstreams/{name}/breakers          every endpoint's breaker as it is (staff with view_upstream)
    POST upstreams/{name}/breakers/reset    close one endpoint's ({"endpoint"}) or all (change_upstream)
    POST upstreams/{name}/breakers/open     force one open for {"seconds"} (change_upstream)

Every change is recorded with the user who made it (a breaker event, one log
line); every answer lists every endpoint's state read back from the shared
store after the change.
"""
from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from resilience.ops import services
from resilience.ops.permissions import UpstreamOperate, UpstreamRead
from resilience.ops.serializers import BREAKER_STATES, BreakerStatusSerializer, error_responses

NAME = OpenApiParameter("name", str, OpenApiParameter.PATH, description="The upstream's name (a slug).")


class ForcedSerializer(serializers.Serializer):
    until = serializers.FloatField(help_text="Unix time the forced opening ends (then a probe decides).")
    by = serializers.CharField(help_text="Who forced it open.")
    reason = serializers.CharField(allow_blank=True)


class EndpointBreakerSerializer(serializers.Serializer):
    name = serializers.CharField(allow_blank=True, help_text="Empty for a single-URL upstream.")
    breaker = serializers.CharField(help_text="The breaker's name (upstream or upstream/endpoint).")
    enabled = serializers.BooleanField()
    state = serializers.ChoiceField(BREAKER_STATES)
    breaker_state = serializers.ChoiceField(BREAKER_STATES)
    failures = serializers.IntegerField()
    retry_after = serializers.FloatField(allow_null=True)
    cooling_for = serializers.FloatField(help_text="Seconds left out of rotation after a Retry-After.")
    forced = ForcedSerializer(allow_null=True)


class BreakersResponseSerializer(serializers.Serializer):
    success = serializers.BooleanField()
    upstream = serializers.SlugField()
    breaker = BreakerStatusSerializer()
    endpoints = EndpointBreakerSerializer(many=True)


class ResetRequestSerializer(serializers.Serializer):
    endpoint = serializers.SlugField(required=False, allow_blank=True, max_length=64, help_text=(
        "The endpoint to reset; absent: every endpoint of the upstream."))
    reason = serializers.CharField(required=False, allow_blank=True, max_length=100, default="")


class OpenRequestSerializer(serializers.Serializer):
    endpoint = serializers.SlugField(required=False, allow_blank=True, max_length=64, help_text=(
        "The endpoint to open; absent or empty for a single-URL upstream."))
    seconds = serializers.FloatField(min_value=1, max_value=services.FORCE_OPEN_MAX,
                                     help_text="How long it stays open before a probe decides.")
    reason = serializers.CharField(required=False, allow_blank=True, max_length=100, default="")


def _answer(state: dict) -> Response:
    return Response(BreakersResponseSerializer({"success": True, **state}).data)


class BreakersView(APIView):
    permission_classes = [UpstreamRead]

    @extend_schema(operation_id="resilience_upstreams_breakers", parameters=[NAME],
                   summary="Every endpoint's breaker as it is now (staff with view_upstream)",
                   responses={200: BreakersResponseSerializer, **error_responses(401, 403, 404)})
    def get(self, request: Request, name: str) -> Response:
        return _answer(services.breakers_state(name=name))


class BreakersResetView(APIView):
    permission_classes = [UpstreamOperate]

    @extend_schema(operation_id="resilience_upstreams_breakers_reset", parameters=[NAME],
                   summary="Close one endpoint's breaker, or every one (staff with change_upstream)",
                   request=ResetRequestSerializer,
                   responses={200: BreakersResponseSerializer, **error_responses(400, 401, 403, 404, 409)})
    def post(self, request: Request, name: str) -> Response:
        body = ResetRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        by, data = request.user.get_username(), body.validated_data
        if "endpoint" in data:
            state = services.breaker_endpoint_reset(name=name, endpoint=data["endpoint"], by=by,
                                                    reason=data["reason"])
        else:
            state = services.breaker_reset_all(name=name, by=by, reason=data["reason"])
        return _answer(state)


class BreakersOpenView(APIView):
    permission_classes = [UpstreamOperate]

    @extend_schema(operation_id="resilience_upstreams_breakers_open", parameters=[NAME],
                   summary="Force one endpoint's breaker open for a while (staff with change_upstream)",
                   request=OpenRequestSerializer,
                   responses={200: BreakersResponseSerializer, **error_responses(400, 401, 403, 404, 409)})
    def post(self, request: Request, name: str) -> Response:
        body = OpenRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        return _answer(services.breaker_force_open(
            name=name, endpoint=data.get("endpoint"), seconds=data["seconds"],
            by=request.user.get_username(), reason=data["reason"]))
