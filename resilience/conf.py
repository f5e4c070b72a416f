"""The resilience app's settings: `settings.RESILIENCE` over `DEFAULTS`.

Read through `resilience_settings.NAME` at use time (never copied into module
constants), reloaded on Django's `setting_changed` so `override_settings` works.
"""
from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.signals import setting_changed

DEFAULTS: dict[str, Any] = {
    # Retention, enforced by `manage.py prune_telemetry` (alias prune_call_logs):
    # call-log rows, minute rollups (the 5 m and 1 h statistics and the
    # dashboard chart), hour rollups (24 h, the edges of 7 d) and day rollups
    # (whole days of long windows), in days.
    "CALL_LOG_RETENTION_DAYS": 7,
    "ROLLUP_MINUTE_RETENTION_DAYS": 3,
    "ROLLUP_HOUR_RETENTION_DAYS": 90,
    "ROLLUP_DAY_RETENTION_DAYS": 730,
    # Rows deleted per statement while pruning: each batch is its own short
    # transaction, so a prune never holds a table for long nor loads rows.
    "PRUNE_BATCH_SIZE": 5000,
    # Rollup minutes (upstream, endpoint, minute) a process keeps in memory
    # while the database refuses writes; past it the oldest are dropped (logged).
    "ROLLUP_PENDING_MAX": 5000,
    # Buffered call-log rows are bulk-written at least this often (seconds)...
    "CALL_LOG_FLUSH_INTERVAL": 1.0,
    # ...or as soon as this many are waiting.
    "CALL_LOG_BUFFER_MAX": 500,
    # Each process checks the policy version key at most this often (seconds).
    "POLICY_CHECK_INTERVAL": 1.0,
    # Hot cached responses are also kept in process for at most this long
    # (seconds) when the cache is Redis, saving a round trip per hit; a clear
    # made by another process is seen after at most this long. 0 turns it off.
    "HTTP_CACHE_NEAR_SECONDS": 1.0,
    # Reverse proxies (addresses or networks) whose X-Forwarded-For is
    # believed: the client address of a request they pass is the last one in
    # the header that is not a trusted proxy. Empty: no one, REMOTE_ADDR is the
    # client (gunicorn.conf.py's forwarded_allow_ips follows the same variable).
    "TRUSTED_PROXIES": [],
    # /metrics: this bearer token is required, from every peer (loopback too)...
    "METRICS_TOKEN": "",
    # ...unless the peer's address is in this list (addresses or networks,
    # "10.0.0.0/8"; a request relayed by a proxy never matches).
    "METRICS_ALLOWED_ADDRESSES": [],
    # Seconds a response body may wait on a client that reads nothing before
    # the response is closed (its stream's upstream connection and bulkhead slot
    # released; project.asgi_handler). 0: wait forever.
    "SEND_TIMEOUT": 30.0,
    # API requests slower than this are logged once with their request id.
    "SLOW_REQUEST_SECONDS": 1.0,
    # Responses at least this big (bytes) are gzip/brotli-compressed when the
    # client accepts it (resilience.ops.middleware.CompressionMiddleware).
    "COMPRESS_MIN_SIZE": 1024,
    # prometheus_client multiprocess directory (PROMETHEUS_MULTIPROC_DIR): when
    # set, /metrics sums every worker process's metric files found there.
    "METRICS_MULTIPROC_DIR": "",
    # Where credentials are read from: a mapping of variable name -> secret
    # (project/settings.py hands over only the declared variables of the
    # environment). Policies name a variable; see `credential_refusal`.
    "SECRETS": {},
    # Variables declared as upstream credentials: by name, or by this prefix
    # ("" declares none by prefix). Nothing else may be named by a policy.
    "CREDENTIAL_VARIABLES": [],
    "CREDENTIAL_PREFIX": "UPSTREAM_",
    # The deploy's own variables (every one project/settings.py reads): refused
    # by name whatever is declared, as are `ALWAYS_REFUSED` and `REFUSED_PREFIXES`.
    "DEPLOY_VARIABLES": (),
    # `migrate` creates the built-in upstreams (openai) that do not exist yet,
    # as `manage.py seed_upstreams` does.
    "SEED_ON_MIGRATE": True,
    # Serve the flaky demo upstream (/demo/flaky/...) without DEBUG (resilience.ops.demo).
    "DEMO_ENABLED": False,
    # Jobs (resilience.jobs): finished jobs and probe results older than this
    # many days are pruned by the scheduled prune task.
    "JOB_RETENTION_DAYS": 7,
    # Probe results kept per upstream at most (older ones are pruned).
    "PROBE_HISTORY_KEEP": 500,
    # A running attempt not finished this long after its lease ran out is taken
    # as lost (worker killed) and retried or dead-lettered (seconds of grace).
    "JOB_LEASE_GRACE": 30.0,
    # /readyz says "degraded" when a due job has waited this long (seconds):
    # no worker is taking jobs. 0 turns the check off.
    "JOBS_STALL_SECONDS": 300.0,
    # Fernet keys sealing accounts' tokens at rest (resilience.client.sealing):
    # the first encrypts, all decrypt. Empty: a development key derived from
    # SECRET_KEY under DEBUG; refused for stored accounts otherwise.
    "CREDENTIALS_KEYS": [],
    # OAuth2 accounts (resilience.client.accounts): an access token is
    # refreshed when less than a fifth of its life, and at most this many
    # seconds, is left...
    "ACCOUNT_REFRESH_MARGIN_MAX": 300.0,
    # ...a failed refresh is retried after this many seconds, doubled per
    # failure up to the cap (with jitter)...
    "ACCOUNT_BACKOFF_BASE": 2.0,
    "ACCOUNT_BACKOFF_MAX": 300.0,
    # ...and a call to the token server times out after this many seconds.
    "ACCOUNT_TOKEN_TIMEOUT": 10.0,
    # Endpoint limits (resilience.client.quota): the window an endpoint's
    # rpm_limit and tpm_limit count over (60: per minute; tests shorten it)...
    "QUOTA_WINDOW_SECONDS": 60.0,
    # ...plus this margin: a request reaches the provider a little after it is
    # admitted, and the provider counts arrivals (the longest such delay)...
    "QUOTA_MARGIN_SECONDS": 0.25,
    # ...each tenth of it (1: no spreading) holding a tenth of the limit...
    "QUOTA_SLICES": 10,
    # ...the completion tokens a call reserves when its body names no max_tokens...
    "QUOTA_DEFAULT_MAX_TOKENS": 1024,
    # ...the longest a waiting call sleeps between looks at the room...
    "QUOTA_POLL_MAX": 0.5,
    # ...and the most requests one admission reserves at once for its process's
    # next calls while the endpoint is far from its limits (held for half the
    # margin; 0 or 1: one round trip per call).
    "QUOTA_LEASE": 16,
}


class AppSettings:
    """An app's settings: `getattr(settings, setting_name)` over `defaults`,
    read at first use and reloaded on `setting_changed` (so `override_settings`
    works). Unknown names raise AttributeError.

    A name read once is kept as an attribute of the instance, so later reads
    are plain attribute reads, not a call of `__getattr__` (the hot paths read
    a dozen a call: 0.3-0.5 us each through the method)."""

    def __init__(self, setting_name: str, defaults: dict[str, Any]) -> None:
        self._setting_name = setting_name
        self._defaults = defaults
        setting_changed.connect(self._on_setting_changed, weak=False)

    def __getattr__(self, name: str) -> Any:  # only for a name not read since the last reload
        if name.startswith("_") or name not in self._defaults:
            raise AttributeError(f"invalid {self._setting_name} setting: {name!r}")
        user = getattr(settings, self._setting_name, {}) or {}
        value = self.__dict__[name] = user.get(name, self._defaults[name])
        return value

    def reload(self) -> None:
        for name in self._defaults:
            self.__dict__.pop(name, None)

    def _on_setting_changed(self, *, setting: str, **kwargs: Any) -> None:
        if setting == self._setting_name:
            self.reload()


resilience_settings = AppSettings("RESILIENCE", DEFAULTS)

#: Never an upstream credential, whatever the settings read or declare: the
#: deploy's secrets by name (some read by code other than the settings).
ALWAYS_REFUSED = frozenset({"SECRET_KEY", "SECRET_KEY_FALLBACKS", "DATABASE_URL", "REDIS_URL",
                            "JOBS_REDIS_URL", "CREDENTIALS_KEYS", "METRICS_TOKEN"})
#: Prefixes of variables Django and libpq read (DJANGO_SETTINGS_MODULE,
#: DJANGO_SUPERUSER_PASSWORD, PGPASSWORD, ...): never an upstream credential.
REFUSED_PREFIXES = ("DJANGO_", "PG")


def credential_refusal(name: str) -> str:
    """Why a policy may not name environment variable `name` as its
    credential ("" when it may): it is one of the deploy's own variables, or
    it was not declared (RESILIENCE CREDENTIAL_VARIABLES / CREDENTIAL_PREFIX).
    The message names the variable, never a value."""
    if name in ALWAYS_REFUSED or name in resilience_settings.DEPLOY_VARIABLES or name.startswith(
            REFUSED_PREFIXES):
        return (f"{name} is one of the deployment's own variables and can never be an upstream "
                f"credential.")
    prefix = resilience_settings.CREDENTIAL_PREFIX
    if name in resilience_settings.CREDENTIAL_VARIABLES or (prefix and name.startswith(prefix)):
        return ""
    declared = f"start its name with {prefix} or " if prefix else ""
    return (f"{name} is not declared as an upstream credential: {declared}list it in "
            f"UPSTREAM_CREDENTIAL_VARIABLES.")
