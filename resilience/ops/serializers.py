"""Shapes of the operations API (`/api/resilience/`) and the OpenAPI glue
shared by both apps' APIs.

Responses are rendered through these serializers, so the published schema is
exactly what is sent: a key a selector adds appears in the API only once it is
declared here. `ErrorResponse` is the one error body of the project (see
resilience.ops.api); `error_responses()` documents it per status code, and the
`error_responses_hook` postprocessing hook adds the 401 to every operation
that requires authentication and does not say so itself.
"""
from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers

from resilience.models import CallLog, Outcome, Upstream
from resilience.telemetry.selectors import WINDOWS

BREAKER_STATES = ("closed", "half-open", "open", "disabled")


# -- errors ---------------------------------------------------------------------------------------
class ErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="Machine-readable and stable, e.g. `unknown_upstream`.")
    message = serializers.CharField(help_text="For humans; may change.")
    field = serializers.CharField(required=False, allow_null=True,
                                  help_text="400 `invalid`: the first offending field.")
    fields = serializers.DictField(required=False, help_text="400 `invalid`: every field's problems.")
    upstream = serializers.CharField(required=False, help_text="Upstream errors: which upstream.")
    retry_after = serializers.FloatField(required=False, help_text=(
        "Seconds until a retry may succeed (also sent as a `Retry-After` header)."))


class ErrorResponseSerializer(serializers.Serializer):
    success = serializers.BooleanField(help_text="Always false.")
    error = ErrorDetailSerializer()


ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "Invalid input (`invalid`; `error.field` names the first problem).",
    401: "No or bad credentials (`not_authenticated`, `authentication_failed`).",
    403: "Authenticated but not allowed: staff only (`permission_denied`).",
    404: "No such resource (`unknown_upstream`, `not_found`).",
    409: "The change does not apply now (`breaker_control_refused`, `suggestion_conflict`).",
    413: "The request body is over the size limit (`request_too_large`).",
    415: "The request body is not `application/json` (`unsupported_media_type`).",
    429: "Too many requests (`throttled`; see `Retry-After`).",
    502: "The upstream failed (`upstream_error` kinds).",
    503: "Unavailable (`breaker_open`, `upstream_disabled`; see `Retry-After`).",
    504: "The upstream timed out (`upstream_timeout`).",
}


def error_responses(*statuses: int, **descriptions: str) -> dict[int, OpenApiResponse]:
    """`{status: ErrorResponse}` for `extend_schema(responses=...)`; a keyword
    `e404="..."` replaces the stock description of that status."""
    return {status: OpenApiResponse(ErrorResponseSerializer,
                                    description=descriptions.get(f"e{status}", ERROR_DESCRIPTIONS[status]))
            for status in statuses}


def error_responses_hook(result: dict[str, Any], generator: Any, request: Any,
                         public: bool) -> dict[str, Any]:
    """SPECTACULAR_SETTINGS postprocessing hook: document the errors DRF and
    the project answer for whole classes of operations, so no view has to
    repeat them: 401 and 429 (token guessing, resilience.ops.throttling) on every
    operation that needs authentication; 413, 415 and the 400 `parse_error`
    on every operation that takes a body (resilience.ops.parsers answers them for
    all); 404 on every operation with a path parameter (a value the route does
    not match is a JSON 404 too: resilience.ops.api.api_route_fallback)."""
    components = result.setdefault("components", {}).setdefault("schemas", {})
    if "ErrorResponse" not in components:
        return result  # nothing references the error shape (no API routes)
    ref = {"$ref": "#/components/schemas/ErrorResponse"}

    def document(operation: dict[str, Any], status: int) -> None:
        operation["responses"].setdefault(str(status), {
            "content": {"application/json": {"schema": ref}}, "description": ERROR_DESCRIPTIONS[status]})

    for path_item in result.get("paths", {}).values():
        for operation in path_item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            if "requestBody" in operation:  # every JSON body goes through resilience.ops.parsers
                document(operation, 413)
                document(operation, 415)
                operation["responses"].setdefault("400", {
                    "content": {"application/json": {"schema": ref}},
                    "description": "Not JSON or nested too deeply (`parse_error`)."})
            security = operation.get("security")
            if security and {} not in security:
                document(operation, 401)
                document(operation, 429)
            if any(param.get("in") == "path" for param in operation.get("parameters", ())):
                document(operation, 404)
    return result


class BearerTokenScheme(OpenApiAuthenticationExtension):
    """`Authorization: Bearer <token>` (aigen.edge.auth.BearerTokenAuthentication)."""

    target_class = "aigen.edge.auth.BearerTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {"type": "http", "scheme": "bearer",
                "description": ("An API token (`manage.py issue_token`) sent as "
                                "`Authorization: Bearer <token>`.")}


# -- live state and statistics --------------------------------------------------------------------
class BreakerStatusSerializer(serializers.Serializer):
    state = serializers.ChoiceField(choices=BREAKER_STATES)
    failures = serializers.IntegerField(help_text="Consecutive failures counted so far.")
    fail_max = serializers.IntegerField(help_text="Consecutive failures that open the breaker.")
    opened_at = serializers.FloatField(allow_null=True, help_text="Unix time it last opened.")
    retry_after = serializers.FloatField(allow_null=True, help_text=(
        "Open: seconds until the next probe may pass; null otherwise."))


class WindowStatsSerializer(serializers.Serializer):
    window_seconds = serializers.IntegerField()
    calls = serializers.IntegerField()
    errors = serializers.IntegerField()
    error_rate = serializers.FloatField(help_text="errors / calls (0..1).")
    p50_ms = serializers.FloatField(allow_null=True, help_text="Of calls that reached the upstream.")
    p95_ms = serializers.FloatField(allow_null=True)
    p99_ms = serializers.FloatField(allow_null=True)
    cache_hit_rate = serializers.FloatField(help_text="Calls answered from the cache / calls (0..1).")
    retries = serializers.IntegerField(help_text="Attempts beyond the first, summed.")
    breaker_trips = serializers.IntegerField(help_text="Times the breaker opened.")
    outcomes = serializers.DictField(child=serializers.IntegerField(), help_text="Calls per outcome.")


class WindowsSerializer(serializers.Serializer):
    """One `WindowStats` per window name (`5m`, `1h`, `24h`, `7d`)."""

    def get_fields(self) -> dict[str, serializers.Field]:
        return {name: WindowStatsSerializer() for name in WINDOWS}


class PolicySummarySerializer(serializers.Serializer):
    description = serializers.CharField()
    connect_timeout = serializers.FloatField()
    read_timeout = serializers.FloatField()
    deadline = serializers.FloatField()
    first_token_timeout = serializers.FloatField(
        help_text="Seconds to a stream's first content event (0: off).")
    stream_idle_timeout = serializers.FloatField(help_text="Longest silence inside a stream (0: off).")
    stream_max_seconds = serializers.FloatField(help_text="Most seconds one stream may last (0: no cap).")
    retry_total = serializers.IntegerField()
    breaker_enabled = serializers.BooleanField()
    breaker_fail_max = serializers.IntegerField()
    breaker_reset_timeout = serializers.FloatField()
    cache_ttl = serializers.IntegerField()
    health_path = serializers.CharField()
    log_sample_rate = serializers.FloatField(help_text=(
        "Share of successful calls that keep a call-log row; statistics count every call."))
    probe_interval = serializers.IntegerField(help_text="Seconds between scheduled health probes (0: off).")


class UpstreamOverviewSerializer(serializers.Serializer):
    name = serializers.SlugField()
    base_url = serializers.URLField()
    enabled = serializers.BooleanField()
    policy = PolicySummarySerializer()
    breaker = BreakerStatusSerializer()
    stats = WindowStatsSerializer(help_text="The last 5 minutes.")


class UpstreamListResponseSerializer(serializers.Serializer):
    success = serializers.BooleanField()
    upstreams = UpstreamOverviewSerializer(many=True)


class UpstreamPolicySerializer(serializers.ModelSerializer):
    """Every policy field. Credentials are never stored: `auth_env_var` is
    only the name of the environment variable that holds them."""

    retry_statuses = serializers.ListField(child=serializers.IntegerField())
    retry_methods = serializers.ListField(child=serializers.CharField())
    cache_methods = serializers.ListField(child=serializers.CharField())
    cache_vary_headers = serializers.ListField(child=serializers.CharField())
    default_headers = serializers.DictField(child=serializers.CharField())
    served_models = serializers.ListField(child=serializers.CharField())

    class Meta:
        model = Upstream
        exclude = ["id"]
        read_only_fields = [f.name for f in Upstream._meta.concrete_fields]


class CallLogSerializer(serializers.ModelSerializer):
    retries = serializers.ListField(child=serializers.DictField(), help_text="One entry per failed attempt.")

    class Meta:
        model = CallLog
        fields = ["id", "created_at", "upstream", "method", "path", "status", "outcome", "latency_ms",
                  "attempts", "retries", "cache_hit", "breaker_state", "request_id", "error", "endpoint"]
        read_only_fields = fields


class AccountStateSerializer(serializers.Serializer):
    """An OAuth2 account as resilience.client.accounts.account_state reads it."""

    kind = serializers.CharField()
    state = serializers.ChoiceField(choices=["ok", "backoff", "failing", "expired", "needs_new_token",
                                             "no_token"])
    expires_at = serializers.CharField(allow_null=True)
    expires_in = serializers.FloatField(allow_null=True)
    last_refresh_at = serializers.CharField(allow_null=True)
    refreshes = serializers.IntegerField()
    failures = serializers.IntegerField()
    failure_reason = serializers.CharField(allow_blank=True)
    needs_new_token = serializers.BooleanField(help_text="The refresh token was refused: set a new one.")
    has_refresh_token = serializers.BooleanField()


class EndpointStateSerializer(serializers.Serializer):
    """One endpoint as resilience.client.endpoints.snapshot reads it."""

    name = serializers.CharField(help_text="Empty for a single-URL upstream's own URL.")
    base_url = serializers.CharField()
    auth_env_var = serializers.CharField(help_text="The variable's name; never the secret.")
    enabled = serializers.BooleanField()
    weight = serializers.IntegerField()
    priority = serializers.IntegerField()
    model = serializers.CharField(help_text="Model name sent instead of the caller's (empty: none).")
    pool_size = serializers.IntegerField(allow_null=True)
    rpm_limit = serializers.IntegerField(allow_null=True, help_text="Requests per minute (null: none set).")
    tpm_limit = serializers.IntegerField(allow_null=True, help_text="Tokens per minute (null: none set).")
    state = serializers.CharField(help_text="Its breaker: closed, half-open, open or disabled.")
    failures = serializers.IntegerField()
    retry_after = serializers.FloatField(allow_null=True)
    cooling_for = serializers.FloatField(help_text="Seconds left of a Retry-After cooldown.")
    score = serializers.FloatField(allow_null=True, help_text=(
        "success_rate * (1 - avg_latency_ms / 10000) over the last minute; null without calls."))
    calls = serializers.IntegerField()
    error_rate = serializers.FloatField()
    p95_ms = serializers.FloatField(allow_null=True)
    account = AccountStateSerializer(allow_null=True, help_text=(
        "An OAuth2 account's state (null: the credential is an environment variable); never a token."))


class EndpointPoolSerializer(serializers.Serializer):
    strategy = serializers.CharField()
    max_ejection_percent = serializers.IntegerField()
    state = serializers.ChoiceField(choices=["open", "closed"], help_text="open: every endpoint is out.")
    window_seconds = serializers.IntegerField(help_text="Window of calls, error_rate and p95_ms.")
    endpoints = EndpointStateSerializer(many=True)


class UpstreamDetailResponseSerializer(serializers.Serializer):
    success = serializers.BooleanField()
    upstream = UpstreamPolicySerializer()
    breaker = BreakerStatusSerializer()
    pool = EndpointPoolSerializer(help_text="The endpoints and their live state (one for a single URL).")
    stats = WindowsSerializer()
    recent_failures = CallLogSerializer(many=True, help_text="The most recent failed calls, newest first.")


class CallLogFilterSerializer(serializers.Serializer):
    """Query parameters of the call log."""

    outcome = serializers.ChoiceField(choices=Outcome.choices, required=False)
    status = serializers.IntegerField(required=False, min_value=100, max_value=599,
                                      help_text="HTTP status the upstream answered.")
    since = serializers.DateTimeField(required=False, help_text="ISO 8601; calls at or after it.")
    until = serializers.DateTimeField(required=False, help_text="ISO 8601; calls at or before it.")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs.get("since") and attrs.get("until") and attrs["since"] > attrs["until"]:
            raise serializers.ValidationError({"until": "Must not be before `since`."})
        return attrs


# -- operations -------------------------------------------------------------------------------
class BreakerResetResponseSerializer(serializers.Serializer):
    success = serializers.BooleanField()
    upstream = serializers.SlugField()
    breaker = BreakerStatusSerializer()


class ProbeErrorSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="The UpstreamError kind, e.g. `breaker_open`, `upstream_timeout`.")
    message = serializers.CharField()
    upstream = serializers.CharField(required=False)
    retry_after = serializers.FloatField(required=False)
    last_status = serializers.IntegerField(required=False, allow_null=True)
    last_error = serializers.CharField(required=False, allow_null=True)
    upstream_status = serializers.IntegerField(required=False)


class ProbeResultSerializer(serializers.Serializer):
    ok = serializers.BooleanField(help_text="A response below 400 arrived.")
    status = serializers.IntegerField(allow_null=True, help_text="The upstream's status; null on failure.")
    error = ProbeErrorSerializer(allow_null=True, help_text="Why no response arrived.")
    detail = serializers.CharField(required=False, allow_blank=True, help_text=(
        "The start of an error answer's body, credentials masked; empty otherwise."))
    attempts = serializers.IntegerField(required=False)
    latency_ms = serializers.FloatField()


class ProbeResponseSerializer(serializers.Serializer):
    success = serializers.BooleanField()
    upstream = serializers.SlugField()
    path = serializers.CharField(help_text="The health path called.")
    probe = ProbeResultSerializer()


class CacheClearedResponseSerializer(serializers.Serializer):
    success = serializers.BooleanField()
    upstream = serializers.SlugField()
    deleted = serializers.IntegerField(help_text="Cached responses removed.")


class CacheStatsResponseSerializer(serializers.Serializer):
    success = serializers.BooleanField()
    backend = serializers.ChoiceField(choices=["redis", "memory"], help_text="The store serving now.")
    redis_configured = serializers.BooleanField()
    fallback = serializers.BooleanField(help_text="Redis is configured but local memory serves.")
    scope = serializers.CharField(help_text="`all workers` (Redis up) or `this process`.")
    hits = serializers.IntegerField()
    misses = serializers.IntegerField()
    sets = serializers.IntegerField()
    deletes = serializers.IntegerField()
    errors = serializers.IntegerField()
    fallbacks = serializers.IntegerField(help_text="Times the backend fell back to local memory.")
    total_requests = serializers.IntegerField(help_text="hits + misses")
    hit_rate = serializers.FloatField(help_text="hits / (hits + misses), 0..1.")
    hit_ratio = serializers.FloatField(help_text="The same number (0..1); `GET /api/ai/cache/stats` "
                                                 "has it too, next to its percentage string `hit_rate`.")
