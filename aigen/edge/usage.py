"""GET /api/ai/usage: the usage ledger (aigen.generation.ledger) as the API
shows it. A caller sees its own usage; a caller the admin would let read the
ledger (active staff with `aigen.view_usageledger`, the admin's *Usage
ledger* page: resilience.ops.permissions.admin_allows) sees everyone's and
may filter by `user` (a username). Being staff alone is not enough. Everyone
may filter by `since` / `until` (dates, inclusive) and `model`. Unflushed
usage of this process is written first, so a caller sees its last call."""
from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response

from aigen.edge.api import AigenView
from aigen.generation.ledger import usage_flush
from aigen.generation.selectors import usage_list
from resilience.ops.permissions import admin_allows
from resilience.ops.serializers import error_responses

#: The admin's permission to read the usage ledger: needed to read anyone else's usage here.
USAGE_VIEW = "aigen.view_usageledger"


class UsageFilterSerializer(serializers.Serializer):
    """Query parameters of GET /api/ai/usage."""

    since = serializers.DateField(required=False, help_text="ISO date (UTC day); days at or after it.")
    until = serializers.DateField(required=False, help_text="ISO date (UTC day); days at or before it.")
    model = serializers.CharField(required=False, max_length=100)
    user = serializers.CharField(required=False, max_length=150,
                                 help_text="With aigen.view_usageledger: one user's usage (a username).")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs.get("since") and attrs.get("until") and attrs["since"] > attrs["until"]:
            raise serializers.ValidationError({"until": "Must not be before `since`."})
        return attrs


class UsageRowSerializer(serializers.Serializer):
    day = serializers.DateField()
    user_id = serializers.IntegerField()
    username = serializers.CharField()
    model = serializers.CharField()
    prompt_tokens = serializers.IntegerField(help_text="Cached ones included.")
    cached_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    calls = serializers.IntegerField()
    cost = serializers.DecimalField(max_digits=20, decimal_places=8, help_text="USD")


class UsageTotalsSerializer(serializers.Serializer):
    prompt_tokens = serializers.IntegerField()
    cached_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    calls = serializers.IntegerField()
    cost = serializers.DecimalField(max_digits=20, decimal_places=8)


class UsageResponseSerializer(serializers.Serializer):
    success = serializers.BooleanField()
    scope = serializers.ChoiceField(choices=["own", "all"])
    rows = UsageRowSerializer(many=True)
    totals = UsageTotalsSerializer()


class UsageView(AigenView):
    @extend_schema(
        summary="Token usage and cost per day and model (own; with aigen.view_usageledger: everyone's)",
        parameters=[UsageFilterSerializer],
        responses={200: UsageResponseSerializer, **error_responses(
            400, 403, 404, e403="`user` (another user's) needs aigen.view_usageledger.",
            e404="No such user.")},
    )
    def get(self, request: Request) -> Response:
        filters = UsageFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        query = dict(filters.validated_data)
        username = query.pop("user", None)
        user = request.user
        if admin_allows(user, USAGE_VIEW):
            user_id = None
            if username is not None:
                users = get_user_model().objects.filter(username=username)
                found = users.values_list("pk", flat=True).first()
                if found is None:
                    raise NotFound(f"No user {username!r}.")
                user_id = found
        elif username is not None and username != user.get_username():
            self.permission_denied(
                request, message="Reading another user's usage needs the aigen.view_usageledger permission.")
        else:
            user_id = user.pk
        usage_flush()
        listed = usage_list(user_id=user_id, **query)
        body = {"success": True, "scope": "all" if user_id is None else "own", **listed}
        return Response(UsageResponseSerializer(body).data)


