"""The alerts' API (routes in resilience.urls, under /api/resilience/):

    GET  alerts                    alerts firing (?state=all: pending too), most severe first (view_alert)
    GET  alerts/silences           silences in force and those to come (view_alert)
    POST alerts/silences           silence a rule and/or subject for {"seconds"} (add_silence)
    POST alerts/silences/{id}/end  end a silence now (add_silence)

Every route needs a staff user holding the permission named (as the admin).

Rules are edited in the admin (with history) or applied from a file
(`manage.py config_apply`). Views stay thin: resilience.alerts.services.
"""
from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from resilience import exceptions as errors
from resilience.alerts import services
from resilience.alerts.models import Alert, AlertRule, Silence
from resilience.ops.permissions import AlertRead, SilenceManage
from resilience.ops.serializers import error_responses

SILENCE_MAX = 30 * 86400


class AlertSerializer(serializers.ModelSerializer):
    rule = serializers.CharField(source="rule.name")
    severity = serializers.CharField(source="rule.severity")
    condition = serializers.CharField(source="rule.condition_text")

    class Meta:
        model = Alert
        fields = ("rule", "subject", "state", "severity", "condition", "value", "active_since", "fired_at",
                  "last_notified_at")


class AlertsResponseSerializer(serializers.Serializer):
    success = serializers.BooleanField()
    alerts = AlertSerializer(many=True)


class AlertsQuerySerializer(serializers.Serializer):
    state = serializers.ChoiceField(["firing", "all"], default="firing",
                                    help_text="firing (default), or all: pending ones too.")


class SilenceSerializer(serializers.ModelSerializer):
    rule = serializers.CharField(source="rule.name", allow_null=True, default=None)
    created_by = serializers.CharField(source="created_by.username", allow_null=True, default=None)

    class Meta:
        model = Silence
        fields = ("id", "rule", "subject", "starts_at", "ends_at", "comment", "created_by")


class SilenceRequestSerializer(serializers.Serializer):
    rule = serializers.SlugField(required=False, allow_null=True, default=None, max_length=64,
                                 help_text="The rule's name; absent or null: every rule.")
    subject = serializers.CharField(required=False, allow_blank=True, default="", max_length=130,
                                    help_text="The upstream, upstream/endpoint or queue; empty: every one.")
    seconds = serializers.IntegerField(min_value=60, max_value=SILENCE_MAX, help_text="How long it lasts.")
    comment = serializers.CharField(required=False, allow_blank=True, default="", max_length=200)


class SilenceResponseSerializer(serializers.Serializer):
    success = serializers.BooleanField()
    silence = SilenceSerializer()


class SilencesResponseSerializer(serializers.Serializer):
    success = serializers.BooleanField()
    silences = SilenceSerializer(many=True)


class AlertsView(APIView):
    permission_classes = [AlertRead]

    @extend_schema(operation_id="resilience_alerts", summary="Alerts firing now (and pending: ?state=all)",
                   parameters=[AlertsQuerySerializer],
                   responses={200: AlertsResponseSerializer, **error_responses(400, 401, 403)})
    def get(self, request: Request) -> Response:
        query = AlertsQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        if query.validated_data["state"] == "all":
            alerts = list(Alert.objects.exclude(state=Alert.State.RESOLVED).select_related("rule"))
        else:
            alerts = services.alerts_firing()
        return Response(AlertsResponseSerializer({"success": True, "alerts": alerts}).data)


class SilencesView(APIView):
    def get_permissions(self) -> list:
        return [SilenceManage()] if self.request.method == "POST" else [AlertRead()]

    @extend_schema(operation_id="resilience_alerts_silences", summary="Silences in force or to come",
                   responses={200: SilencesResponseSerializer, **error_responses(401, 403)})
    def get(self, request: Request) -> Response:
        silences = Silence.objects.filter(ends_at__gt=services.clock()).select_related("rule", "created_by")
        return Response(SilencesResponseSerializer({"success": True, "silences": list(silences)}).data)

    @extend_schema(operation_id="resilience_alerts_silence_create",
                   summary="Silence a rule and/or a subject (staff with add_silence)",
                   request=SilenceRequestSerializer,
                   responses={201: SilenceResponseSerializer, **error_responses(400, 401, 403)})
    def post(self, request: Request) -> Response:
        body = SilenceRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        rule = None
        if data["rule"]:
            rule = AlertRule.objects.filter(name=data["rule"]).first()
            if rule is None:
                raise errors.InvalidInput(f"no alert rule named {data['rule']!r}", field="rule")
        silence = services.silence_create(rule=rule, subject=data["subject"], seconds=data["seconds"],
                                          by=request.user, comment=data["comment"])
        return Response(SilenceResponseSerializer({"success": True, "silence": silence}).data, status=201)


ID = OpenApiParameter("silence_id", int, OpenApiParameter.PATH, description="The silence's id.")


class SilenceEndView(APIView):
    permission_classes = [SilenceManage]

    @extend_schema(operation_id="resilience_alerts_silence_end", summary="End a silence now (staff with "
                   "add_silence)", parameters=[ID], request=None,
                   responses={200: SilenceResponseSerializer, **error_responses(401, 403, 404)})
    def post(self, request: Request, silence_id: int) -> Response:
        silence = Silence.objects.filter(pk=silence_id).select_related("rule", "created_by").first()
        if silence is None:
            raise errors.NotFound(f"no silence {silence_id}")
        silence = services.silence_end(silence=silence)
        return Response(SilenceResponseSerializer({"success": True, "silence": silence}).data)
