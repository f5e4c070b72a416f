"""Upstream policies (edited live in the admin, with history), call logs and
their per-minute and per-hour rollups (see resilience.telemetry)."""
from __future__ import annotations

from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from simple_history.models import HistoricalRecords

from resilience.conf import credential_refusal

#: The statuses a policy may name: the registered ones, and Anthropic's 529 (overloaded).
KNOWN_STATUSES = {s.value for s in HTTPStatus} | {529}
HTTP_METHODS = ("GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE")
ENV_VAR_NAME = RegexValidator(r"^[A-Z_][A-Z0-9_]*$",
                              "Use an environment variable name like UPSTREAM_GITHUB_TOKEN.")
#: The permission (on Upstream, covering its endpoints) to bind a credential to an origin.
CHANGE_CREDENTIALS = "resilience.change_credentials"
DEFAULT_PORTS = {"http": 80, "https": 443}
Origin = tuple[str, str, "int | None"]
#: Where a credential goes and which: (origin, variable name).
Binding = tuple[Origin, str]


def origin_of(url: str) -> Origin:
    """(scheme, host, port) of `url`, the port made explicit: where a credential goes."""
    parts = urlsplit(url or "")
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port or DEFAULT_PORTS.get(scheme)


def binding_of(url: str, auth_kind: str, variable: str) -> Binding | None:
    """Where a credential goes: (origin, variable), or None when none is sent."""
    if auth_kind == "none" or not auth_kind or not variable:
        return None
    return origin_of(url), variable


def origin_text(origin: Origin) -> str:
    scheme, host, port = origin
    return f"{scheme}://{host}:{port}"


def credential_moved(before: Binding | None, after: Binding | None) -> bool:
    """Whether going from binding `before` to `after` (each `(origin, variable)`
    or None for no credential) sends a credential somewhere it did not go:
    a credential added, moved to another origin, or another variable sent.
    Dropping a credential never does."""
    return after is not None and after != before


def credential_change_refusal(*, user: Any, before: Binding | None, after: Binding | None) -> str:
    """Why `user` may not make a change that takes a row's credential binding
    from `before` to `after` ("" when they may, or when no credential moves).
    Binding a credential to an origin needs `change_credentials`."""
    if not credential_moved(before, after):
        return ""
    if user is not None and user.has_perm(CHANGE_CREDENTIALS):
        return ""
    origin, variable = after  # type: ignore[misc]
    if before is None:
        what = f"sending credential {variable} to {origin_text(origin)}"
    elif before[0] != origin:
        what = f"moving credential {variable} from {origin_text(before[0])} to {origin_text(origin)}"
    else:
        what = f"sending credential {variable} instead of {before[1]} to {origin_text(origin)}"
    return f"{what} needs the permission to change credentials ({CHANGE_CREDENTIALS})."


def _variable_errors(field: str, name: str) -> dict[str, str]:
    problem = credential_refusal(name) if name else ""
    return {field: problem} if problem else {}


#: Share of successful calls that keep a call-log row, unless an upstream says otherwise:
#: about 4 MB of rows per million successful calls (see the README's storage table).
DEFAULT_LOG_SAMPLE_RATE = 0.01


def default_retry_statuses() -> list[int]:
    return [429, 502, 503, 504]


def default_retry_methods() -> list[str]:
    return ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"]


def default_cache_methods() -> list[str]:
    return ["GET"]


def _seconds(default: float, *, low: float, high: float, help_text: str) -> models.FloatField:
    return models.FloatField(default=default, help_text=help_text,
                             validators=[MinValueValidator(low), MaxValueValidator(high)])


class Upstream(models.Model):
    """How the service talks to one external HTTP API.

    A saved change reaches every worker within about a second (see
    resilience.client); secrets are never stored here, only the name of the
    environment variable that holds them.
    """

    class Strategy(models.TextChoices):
        WEIGHTED = "weighted", "Weighted random"
        PRIORITY = "priority", "Priority order (primary, then fallbacks)"
        LEAST_IN_FLIGHT = "least_in_flight", "Least calls in flight"
        SCORE = "score", "Score: success rate and latency"

    class AuthKind(models.TextChoices):
        NONE = "none", "None"
        BEARER = "bearer", "Authorization: Bearer <secret>"
        HEADER = "header", "Custom header"
        QUERY = "query", "Query parameter"

    name = models.SlugField(max_length=64, unique=True,
                            help_text="Identifier used in code: upstream(\"name\").")
    base_url = models.URLField(max_length=500, help_text=(
        "http(s) URL every call is joined to; a call can never leave it."))
    enabled = models.BooleanField(default=True, help_text="Disabled upstreams refuse every call.")
    description = models.CharField(max_length=200, blank=True)

    connect_timeout = _seconds(3.0, low=0.01, high=60, help_text="Seconds to establish a connection.")
    read_timeout = _seconds(10.0, low=0.01, high=600, help_text="Seconds to wait for each read.")
    deadline = _seconds(30.0, low=0.05, high=1800, help_text=(
        "Seconds one call may take in all, retries and their waits included."))
    first_token_timeout = _seconds(0.0, low=0, high=600, help_text=(
        "Seconds from sending a streamed call to its first content event; past it the attempt is "
        "abandoned and the call moves to another endpoint (0: only the read timeout applies). "
        "Bounded by the deadline."))
    stream_idle_timeout = _seconds(0.0, low=0, high=600, help_text=(
        "Longest silence between events once a stream has started; past it the stream is continued "
        "on another endpoint (0: the read timeout)."))
    stream_max_seconds = _seconds(600.0, low=0, high=7200, help_text=(
        "Most seconds one supervised stream may last in all, continuations included (0: no cap "
        "beyond the idle timer)."))

    retry_total = models.PositiveSmallIntegerField(default=2, validators=[MaxValueValidator(20)],
                                                   help_text="Retries after the first attempt (0 = none).")
    retry_backoff_factor = _seconds(0.5, low=0, high=60, help_text=(
        "Wait before retry n is factor * 2^(n-1) seconds: factor 2 gives 2 s, 4 s, 8 s."))
    retry_backoff_max = _seconds(30.0, low=0, high=600, help_text="Longest wait between retries.")
    retry_jitter = _seconds(0.1, low=0, high=60, help_text="Random extra wait, 0..jitter seconds.")
    retry_statuses = models.JSONField(default=default_retry_statuses, blank=True, help_text=(
        "Status codes that are retried, e.g. [429, 502, 503, 504]."))
    retry_methods = models.JSONField(default=default_retry_methods, blank=True, help_text=(
        "Methods that may be retried after the request was sent. Connection failures are "
        "retried for every method (nothing was sent)."))
    retry_respect_retry_after = models.BooleanField(default=True, help_text=(
        "Wait as long as the upstream's Retry-After asks, up to the cap below."))
    retry_after_max = _seconds(30.0, low=0, high=3600, help_text="Cap on a Retry-After wait (seconds).")

    breaker_enabled = models.BooleanField(default=True)
    breaker_fail_max = models.PositiveSmallIntegerField(default=5, validators=[MinValueValidator(1)],
                                                        help_text="Consecutive failures that open it.")
    breaker_reset_timeout = _seconds(8.0, low=0.01, high=3600, help_text=(
        "Longest wait (seconds) of an open breaker before it lets a probe through: the wait starts "
        "at the probe interval and doubles after each failed probe, up to this."))
    breaker_probe_interval = _seconds(1.0, low=0.01, high=3600, help_text=(
        "Seconds an open breaker waits before its first probe (at most the reset timeout). A probe "
        "that fails doubles the wait, up to the reset timeout; a probe that succeeds closes it. "
        "Short waits bring a recovered endpoint back within seconds; only one probe at a time "
        "passes, across all workers."))
    breaker_success_threshold = models.PositiveSmallIntegerField(
        default=1, validators=[MinValueValidator(1)], help_text="Successful probes that close it.")
    breaker_half_open_max = models.PositiveSmallIntegerField(
        default=1, validators=[MinValueValidator(1)],
        help_text="Probes let through at once while half-open, across all workers.")

    cache_ttl = models.PositiveIntegerField(default=0, help_text=(
        "Seconds a successful response is served from the cache (0 = no caching)."))
    cache_methods = models.JSONField(default=default_cache_methods, blank=True,
                                     help_text="Methods whose responses may be cached.")
    cache_vary_headers = models.JSONField(default=list, blank=True, help_text=(
        "Request headers that are part of the cache key, e.g. [\"Accept-Language\"]."))
    cache_serve_stale = models.BooleanField(default=False, help_text=(
        "On failure or open breaker, answer with an expired copy (marked stale)."))
    cache_stale_max_age = models.PositiveIntegerField(default=3600, help_text=(
        "Seconds an expired copy is kept for serve-stale."))
    single_flight = models.BooleanField(default=True, help_text=(
        "Concurrent identical cacheable calls make one upstream request."))

    pool_size = models.PositiveSmallIntegerField(default=10, validators=[MinValueValidator(1),
                                                                          MaxValueValidator(1000)],
                                                 help_text=(
        "Connections per process to the upstream. A call beyond it waits for a free one until its "
        "deadline (then fails as pool_exhausted, which never counts against the breaker)."))
    bulkhead_max = models.PositiveIntegerField(default=0, validators=[MaxValueValidator(100_000)], help_text=(
        "Most calls in flight to this upstream per process (0 = no limit). Calls beyond it wait up "
        "to the bulkhead wait, then fail fast with 503 bulkhead_full."))
    bulkhead_wait = _seconds(0.5, low=0, high=60, help_text=(
        "Seconds a call may queue for a bulkhead slot before failing fast."))
    default_headers = models.JSONField(default=dict, blank=True, help_text=(
        "Headers sent with every call (no secrets: use the authentication fields)."))
    auth_kind = models.CharField(max_length=10, choices=AuthKind.choices, default=AuthKind.NONE)
    auth_env_var = models.CharField(max_length=100, blank=True, validators=[ENV_VAR_NAME], help_text=(
        "Environment variable holding the secret: one declared as an upstream credential (by default "
        "any name starting with UPSTREAM_). The secret itself is never stored."))
    auth_name = models.CharField(max_length=100, blank=True, help_text=(
        "Header name (custom header) or query parameter name (query parameter)."))
    health_path = models.CharField(max_length=300, blank=True, help_text=(
        "Path called by 'probe now', relative to the base URL."))
    log_sample_rate = models.FloatField(
        default=DEFAULT_LOG_SAMPLE_RATE, validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text=("Share of successful calls that keep a call-log row (0..1). Failed, retried, stale and "
                   "rejected calls always keep theirs, and statistics count every call whatever the "
                   "rate. 1.0 while debugging."))
    probe_interval = models.PositiveIntegerField(default=0, validators=[MaxValueValidator(86400)], help_text=(
        "Seconds between scheduled health probes of the health path (0 = not probed). "
        "Exactly one worker in the cluster probes per interval."))
    endpoint_strategy = models.CharField(
        max_length=20, choices=Strategy.choices, default=Strategy.WEIGHTED, help_text=(
            "How an endpoint is chosen for each attempt when the upstream has several "
            "(resilience.client.endpoints)."))
    max_ejection_percent = models.PositiveSmallIntegerField(
        default=100, validators=[MaxValueValidator(100)], help_text=(
            "Most endpoints (percent) that may be out of rotation at once (breaker open or cooling "
            "down after Retry-After). When more are out, the one back soonest still gets calls, so "
            "any value below 100 keeps at least one endpoint in rotation. 100: all may be out, and "
            "calls then fail fast with 503."))
    served_models = models.JSONField(default=list, blank=True, help_text=(
        "Model names served through the OpenAI-compatible front door (/v1/chat/completions), "
        "e.g. [\"gpt-4o-mini\"]. Leave empty for upstreams that are not language models."))
    context_fallback_model = models.CharField(max_length=200, blank=True, help_text=(
        "Model with a larger context asked instead when a provider answers 400 "
        "context_length_exceeded (the JSON body's \"model\"; it replaces an endpoint's model "
        "override). Empty: that answer is returned at once, never retried on the same model."))
    content_policy_fallback_model = models.CharField(max_length=200, blank=True, help_text=(
        "Model asked instead when a provider refuses a request on content policy "
        "(content_policy_violation, content_filter). Empty: the refusal is returned at once, with "
        "the provider's reason."))

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    history = HistoricalRecords()

    class Meta:
        ordering = ["name"]
        permissions = [("change_credentials", (
            "Can bind a credential to an origin (add one, or change the scheme, host or port of an "
            "upstream or endpoint that sends one)"))]

    def __str__(self) -> str:
        return self.name

    def credential_binding(self) -> Binding | None:
        """(origin, variable) this upstream's own URL gets, or None without a credential."""
        return binding_of(self.base_url, self.auth_kind, self.auth_env_var)

    def clean(self) -> None:
        errors: dict[str, str] = {}
        parts = urlsplit(self.base_url or "")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            errors["base_url"] = "Use an http:// or https:// URL with a host."
        elif parts.query or parts.fragment or parts.username or parts.password:
            errors["base_url"] = "No query, fragment or credentials in the base URL."

        statuses = self.retry_statuses
        if not isinstance(statuses, list) or not all(isinstance(s, int) for s in statuses):
            errors["retry_statuses"] = "A list of status codes, e.g. [502, 503]."
        elif bad := [s for s in statuses if s not in KNOWN_STATUSES or s < 400]:
            errors["retry_statuses"] = f"Not an error status code: {bad}."
        for field in ("retry_methods", "cache_methods"):
            value = getattr(self, field)
            if not isinstance(value, list) or any(m not in HTTP_METHODS for m in value):
                errors[field] = f"A list of methods from {', '.join(HTTP_METHODS)}."
        vary = self.cache_vary_headers
        if not isinstance(vary, list) or not all(isinstance(h, str) and h for h in vary):
            errors["cache_vary_headers"] = "A list of header names."
        elif any(h.lower() in ("authorization", "cookie", "proxy-authorization") for h in vary):
            errors["cache_vary_headers"] = "Credentials never go into a cache key."
        headers = self.default_headers
        if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
            errors["default_headers"] = "An object of header names to string values."
        elif any(k.lower() in ("authorization", "cookie") for k in headers):
            errors["default_headers"] = "Put credentials in an environment variable (authentication)."
        if self.auth_kind != self.AuthKind.NONE and not self.auth_env_var:
            errors["auth_env_var"] = "Name the environment variable that holds the secret."
        errors.update(_variable_errors("auth_env_var", self.auth_env_var))
        if self.auth_kind in (self.AuthKind.HEADER, self.AuthKind.QUERY) and not self.auth_name:
            errors["auth_name"] = "Name the header or query parameter."
        if self.connect_timeout and self.deadline and self.connect_timeout > self.deadline:
            errors["deadline"] = "The deadline must be at least the connect timeout."
        if self.health_path and ("://" in self.health_path or self.health_path.startswith("//")):
            errors["health_path"] = "A path relative to the base URL."
        served = self.served_models
        if not isinstance(served, list) or not all(isinstance(m, str) and m.strip() for m in served):
            errors["served_models"] = "A list of model names, e.g. [\"gpt-4o-mini\"]."
        if errors:
            raise ValidationError(errors)

    def save(self, *args, **kwargs) -> None:
        self.base_url = self.base_url.rstrip("/")
        super().save(*args, **kwargs)


def base_url_errors(url: str) -> str:
    """Why `url` cannot be a base URL ("" when it can)."""
    parts = urlsplit(url or "")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "Use an http:// or https:// URL with a host."
    if parts.query or parts.fragment or parts.username or parts.password:
        return "No query, fragment or credentials in the base URL."
    return ""


class Endpoint(models.Model):
    """One place an upstream's calls can go: a URL and its credential.

    An upstream with no endpoint rows has one implicit endpoint, its own base
    URL and credential (resilience.client.endpoints): existing single-URL
    upstreams need nothing. With rows, the enabled ones form the pool and the
    upstream's base URL is only the default shown for new rows. Each endpoint
    has its own connection pool and circuit breaker; the upstream's strategy
    picks one per attempt and a failed attempt fails over to another.
    """

    upstream = models.ForeignKey(Upstream, on_delete=models.CASCADE, related_name="endpoints")
    name = models.SlugField(max_length=64, help_text=(
        "Shown in call logs, metrics and statistics, e.g. \"primary\" or \"fallback\"."))
    base_url = models.URLField(max_length=500, help_text="http(s) URL this endpoint's calls are joined to.")
    auth_env_var = models.CharField(max_length=100, blank=True, validators=[ENV_VAR_NAME], help_text=(
        "Environment variable holding this endpoint's secret (the upstream's authentication kind "
        "applies), declared as an upstream credential. Empty: the upstream's variable. The secret itself "
        "is never stored."))
    weight = models.PositiveIntegerField(default=1, validators=[MaxValueValidator(10_000)], help_text=(
        "Share of calls under weighted random (and the weight of the score strategy); 0 = only "
        "when no other endpoint is available."))
    priority = models.PositiveSmallIntegerField(default=0, help_text=(
        "Order under the priority strategy: lowest first (the primary), then the fallbacks."))
    enabled = models.BooleanField(default=True, help_text="Disabled endpoints get no calls.")
    model = models.CharField(max_length=200, blank=True, help_text=(
        "Model name sent to this endpoint instead of the caller's (the JSON body's \"model\"), so "
        "one upstream can front OpenAI and an OpenAI-compatible fallback provider."))
    pool_size = models.PositiveSmallIntegerField(null=True, blank=True, validators=[
        MinValueValidator(1), MaxValueValidator(1000)], help_text=(
        "Connections per process to this endpoint (empty: the upstream's pool size)."))

    class WireFormat(models.TextChoices):
        OPENAI = "openai", "OpenAI chat completions"
        ANTHROPIC = "anthropic", "Anthropic Messages"

    wire_format = models.CharField(max_length=10, choices=WireFormat.choices, default=WireFormat.OPENAI,
                                   help_text=(
        "The API this endpoint speaks. The front doors translate a call in the other format there and "
        "back; an Anthropic endpoint gets its credential as x-api-key and an anthropic-version header. "
        "An upstream's endpoints share one format."))

    class CredentialKind(models.TextChoices):
        ENV = "env", "Environment variable"
        OAUTH2_REFRESH = "oauth2_refresh", "OAuth2 account (refresh token)"
        OAUTH2_CLIENT = "oauth2_client", "OAuth2 client credentials"

    credential_kind = models.CharField(max_length=20, choices=CredentialKind.choices,
                                       default=CredentialKind.ENV, help_text=(
        "Where this endpoint's credential comes from: an environment variable (the upstream's "
        "authentication kind applies), or an OAuth2 account whose access token is refreshed by the "
        "gateway and sent as Authorization: Bearer."))
    token_url = models.URLField(max_length=500, blank=True, help_text="OAuth2 token endpoint.")
    client_id = models.CharField(max_length=200, blank=True, help_text="OAuth2 client id.")
    client_secret_env = models.CharField(max_length=100, blank=True, validators=[ENV_VAR_NAME], help_text=(
        "Environment variable holding the OAuth2 client secret (declared as an upstream credential); "
        "required for client credentials, optional for refresh-token accounts."))
    scope = models.CharField(max_length=500, blank=True, help_text="OAuth2 scope asked for (optional).")

    rpm_limit = models.PositiveIntegerField(null=True, blank=True, validators=[MinValueValidator(1)],
                                            help_text=(
        "Requests per minute this endpoint's account allows (empty: unlimited, or what the provider's "
        "x-ratelimit headers announce). Calls past it wait for room by priority, up to their deadline."))
    tpm_limit = models.PositiveIntegerField(null=True, blank=True, validators=[MinValueValidator(1)],
                                            help_text=(
        "Tokens per minute this endpoint's account allows (empty: unlimited, or what the provider "
        "announces). A call reserves its prompt estimate plus max_tokens, corrected from the answer's "
        "usage."))

    history = HistoricalRecords()

    class Meta:
        ordering = ["upstream", "priority", "name"]
        constraints = [models.UniqueConstraint(fields=["upstream", "name"],
                                               name="resilience_endpoint_name")]

    def __str__(self) -> str:
        return f"{self.upstream_id and self.upstream.name}/{self.name}"

    def credential_binding(self, upstream: Upstream | None = None) -> Binding | None:
        """(origin, variable) this endpoint gets (its own variable, else the
        upstream's), or None when no credential is sent to it."""
        upstream = upstream or self.upstream
        return binding_of(self.base_url, upstream.auth_kind, self.auth_env_var or upstream.auth_env_var)

    @property
    def is_account(self) -> bool:
        return self.credential_kind != self.CredentialKind.ENV

    def clean(self) -> None:
        errors = _variable_errors("auth_env_var", self.auth_env_var)
        errors.update(_variable_errors("client_secret_env", self.client_secret_env))
        if self.is_account:
            if not self.token_url:
                errors["token_url"] = "An OAuth2 account needs its token URL."
            if not self.client_id:
                errors["client_id"] = "An OAuth2 account needs its client id."
            if self.credential_kind == self.CredentialKind.OAUTH2_CLIENT and not self.client_secret_env:
                errors["client_secret_env"] = "Client credentials need the client secret's variable."
        problem = base_url_errors(self.base_url)
        if problem:
            errors["base_url"] = problem
        if errors:
            raise ValidationError(errors)

    def save(self, *args, **kwargs) -> None:
        self.base_url = self.base_url.rstrip("/")
        super().save(*args, **kwargs)


class Account(models.Model):
    """The live state of an endpoint's OAuth2 account (resilience.client.accounts).

    Tokens are stored sealed (resilience.client.sealing), never in clear.
    Kept apart from `Endpoint` so a refresh (every token lifetime) writes no
    history row; the endpoint's configuration keeps its history."""

    endpoint = models.OneToOneField(Endpoint, on_delete=models.CASCADE, related_name="account")
    refresh_token_sealed = models.TextField(blank=True)
    access_token_sealed = models.TextField(blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    #: The access token's lifetime when issued (seconds): the refresh margin is a fifth of it.
    lifetime = models.FloatField(default=0.0)
    last_refresh_at = models.DateTimeField(null=True, blank=True)
    refreshes = models.PositiveIntegerField(default=0)
    failures = models.PositiveIntegerField(default=0)
    failure_reason = models.CharField(max_length=300, blank=True)
    backoff_until = models.DateTimeField(null=True, blank=True)
    needs_new_token = models.BooleanField(default=False)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"account of {self.endpoint_id}"


class Outcome(models.TextChoices):
    OK = "ok", "ok"
    HTTP_ERROR = "http_error", "HTTP error"
    TIMEOUT = "timeout", "timeout"
    CONNECTION_ERROR = "connection_error", "connection error"
    BREAKER_OPEN = "breaker_open", "breaker open"
    CACHE_HIT = "cache_hit", "cache hit"
    STALE = "stale", "stale (served on error)"
    SHARED = "shared", "shared by single-flight"
    REFUSED = "refused", "refused (disabled, bad path)"
    REJECTED = "rejected", "rejected (bulkhead or pool full)"


FAILED_OUTCOMES = (Outcome.HTTP_ERROR, Outcome.TIMEOUT, Outcome.CONNECTION_ERROR, Outcome.BREAKER_OPEN,
                   Outcome.REJECTED)
CACHED_OUTCOMES = (Outcome.CACHE_HIT, Outcome.STALE, Outcome.SHARED)


class CallLog(models.Model):
    """One row per logical call through resilience.client (never credentials)."""

    created_at = models.DateTimeField(db_index=True)
    upstream = models.CharField(max_length=64, db_index=True)
    method = models.CharField(max_length=10)
    path = models.CharField(max_length=1000, help_text="Path and query, secrets redacted.")
    status = models.PositiveSmallIntegerField(null=True, blank=True)
    outcome = models.CharField(max_length=20, choices=Outcome.choices, db_index=True)
    latency_ms = models.FloatField()
    attempts = models.PositiveSmallIntegerField(default=0)
    retries = models.JSONField(default=list, blank=True, help_text="One entry per failed attempt.")
    cache_hit = models.BooleanField(default=False)
    breaker_state = models.CharField(max_length=10, blank=True)
    endpoint = models.CharField(max_length=64, blank=True, default="", help_text=(
        "The endpoint of the last attempt (empty for a single-URL upstream); each failed "
        "attempt's endpoint is in the retries."))
    request_id = models.CharField(max_length=64, blank=True, db_index=True)
    error = models.CharField(max_length=500, blank=True)
    caller_id = models.PositiveBigIntegerField(null=True, blank=True, help_text=(
        "The id of the user the call was made for (API caller, job owner), when known."))

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["upstream", "created_at"])]

    def __str__(self) -> str:
        return f"{self.method} {self.upstream}{self.path} -> {self.status or self.outcome}"


class BreakerEvent(models.Model):
    """A circuit breaker state change (written by the process that made it)."""

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    upstream = models.CharField(max_length=64, db_index=True)
    from_state = models.CharField(max_length=10)
    to_state = models.CharField(max_length=10)
    reason = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.upstream}: {self.from_state} -> {self.to_state}"


class Rollup(models.Model):
    """Every call of one upstream endpoint in one time bucket, counted.

    Written by resilience.telemetry (an upsert adding counts, so every worker
    merges into the same row); read by every statistic. `latency` is a
    histogram of the latency of calls that reached the upstream (`reached`
    of them) in the log-spaced buckets of resilience.telemetry.histogram, as
    `{bucket: count}`; `outcomes` is `{outcome: count}`.
    """

    upstream = models.CharField(max_length=64)
    endpoint = models.CharField(max_length=100, blank=True, default="",
                                help_text="Empty for an upstream with a single URL.")
    start = models.DateTimeField(help_text="Start of the bucket (UTC).")
    calls = models.BigIntegerField(default=0)
    errors = models.BigIntegerField(default=0, help_text="Failed calls (HTTP error, timeout, connection "
                                                         "error, breaker open).")
    cache_hits = models.BigIntegerField(default=0, help_text="Answered from the cache (fresh, shared "
                                                             "or stale).")
    stale = models.BigIntegerField(default=0, help_text="Answered with an expired copy on failure.")
    breaker_rejections = models.BigIntegerField(default=0, help_text="Refused by an open breaker.")
    retries = models.BigIntegerField(default=0, help_text="Attempts beyond the first, summed.")
    reached = models.BigIntegerField(default=0, help_text="Calls that reached the upstream (the "
                                                          "latency histogram's total).")
    outcomes = models.JSONField(default=dict)
    latency = models.JSONField(default=dict)
    # The counts are kept by resilience.telemetry.counters now; the help text keeps its
    # migrated wording until a migration of its own changes it (issue 25 adds none).
    signals = models.JSONField(default=dict, help_text=(
        "Counts the advisor reads (resilience.advisor.counters), as {name: count}."))

    class Meta:
        abstract = True
        ordering = ["-start"]

    def __str__(self) -> str:
        return f"{self.upstream}{'/' + self.endpoint if self.endpoint else ''} @ {self.start:%Y-%m-%d %H:%M}"


class MinuteRollup(Rollup):
    class Meta(Rollup.Meta):
        constraints = [models.UniqueConstraint(fields=["upstream", "start", "endpoint"],
                                               name="resilience_minuterollup_key")]
        indexes = [models.Index(fields=["start"], name="resilience_minuterollup_start")]


class HourRollup(Rollup):
    class Meta(Rollup.Meta):
        constraints = [models.UniqueConstraint(fields=["upstream", "start", "endpoint"],
                                               name="resilience_hourrollup_key")]
        indexes = [models.Index(fields=["start"], name="resilience_hourrollup_start")]


class DayRollup(Rollup):
    class Meta(Rollup.Meta):
        constraints = [models.UniqueConstraint(fields=["upstream", "start", "endpoint"],
                                               name="resilience_dayrollup_key")]
        indexes = [models.Index(fields=["start"], name="resilience_dayrollup_start")]
# Jobs, dead letters and probe history live in resilience.jobs; their models
# register under this app from here.
# The advisor's suggestions (resilience.advisor) and the alert rules, alerts,
# their history and silences (resilience.alerts) register the same way.
from resilience.advisor.models import Suggestion  # noqa: E402
from resilience.alerts.models import Alert, AlertEvent, AlertRule, Silence  # noqa: E402
from resilience.jobs.models import DeadLetter, Job, ProbeResult  # noqa: E402

__all__ = ["Alert", "AlertEvent", "AlertRule", "BreakerEvent", "CallLog", "DeadLetter", "Endpoint", "Job",
           "ProbeResult", "Silence", "Suggestion", "Upstream"]
