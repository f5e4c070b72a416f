"""Project settings: the only module that reads the environment.

Every value comes from an environment variable (or an optional `.env` file in
the project root) through django-environ. With nothing set, the service runs on
embedded defaults: SQLite in the project folder, local-memory cache, the mock AI
provider. Apps read their own namespaced dicts (`RESILIENCE`, `AIGEN`) through
their `conf.py`; unsafe combinations are reported by system checks
(`resilience.E001` ...), which `project.startup` runs before serving.
"""
from __future__ import annotations

import os
import warnings
from datetime import timedelta
from pathlib import Path

from project.environment import CredentialVariables, Environment

BASE_DIR = Path(__file__).resolve().parent.parent

# Remembers every variable read below: those are the deploy's own, which no
# upstream policy may name (see "Upstream credentials" at the end).
env = Environment()
if (BASE_DIR / ".env").is_file():
    env.read_env(BASE_DIR / ".env")

DEBUG = env.bool("DEBUG", default=False)

# The secret is needed to serve, not to administer. Without SECRET_KEY the
# development key stands in, so management commands (migrate, createsuperuser,
# issue_token, ...) work on a fresh clone; serving with it while DEBUG is off
# is refused with one line (resilience.E001, project.startup), and nothing it
# signs is accepted by a server that has the real key.
DEV_SECRET_KEY = "django-insecure-development-only-never-in-production"
SECRET_KEY = env.str("SECRET_KEY", default="") or DEV_SECRET_KEY

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

# --- TLS -------------------------------------------------------------------------
# Behind a proxy that ends TLS: SECURE_PROXY_SSL_HEADER names the header it sets,
# e.g. "HTTP_X_FORWARDED_PROTO,https" (only when the proxy always sets or strips it).
# HTTPS=true says the service is reached over TLS (on by default with the header).
# With DEBUG off and TLS configured, secure cookies, HSTS and the SSL redirect are on
# unless switched off one by one; with DEBUG on or no TLS they are off unless switched on.
_proxy_ssl_header = env.list("SECURE_PROXY_SSL_HEADER", default=[])
if _proxy_ssl_header:
    SECURE_PROXY_SSL_HEADER = (_proxy_ssl_header[0], _proxy_ssl_header[1] if len(_proxy_ssl_header) > 1
                               else "https")
_tls = not DEBUG and env.bool("HTTPS", default=bool(_proxy_ssl_header))
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=_tls)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=_tls)
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=_tls)
# Probes and scrapes come over plain HTTP from inside the network: never redirected.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000 if _tls else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=_tls)
# Preloading is a promise to browsers that is slow to take back: asked for explicitly.
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
SESSION_COOKIE_HTTPONLY = True
# Django's deployment checks W001-W003 look for its middleware by dotted path and
# miss the project's subclasses (resilience.ops.inline_middleware), skipping the HSTS,
# SSL-redirect and CSRF-cookie checks they gate: resilience.checks runs the same
# checks for the subclasses (resilience.W101-W103 and Django's own messages).
SILENCED_SYSTEM_CHECKS = ["security.W001", "security.W002", "security.W003"]
# A failed CSRF check under /api and /v1 answers JSON in the route's shape (project.errors).
CSRF_FAILURE_VIEW = "project.errors.csrf_failure"

INSTALLED_APPS = [
    # First, so its `runserver` (project.devserver: bodies bounded at the door) wins over staticfiles'.
    "project",
    "django.contrib.admin",
    "django.contrib.auth",
    "axes",  # login lockout (see "Login throttle" below)
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "simple_history",
    "django_tasks",
    "django_tasks_db",
    "django_rq",
    "resilience",
    "aigen",
]

MIDDLEWARE = [
    # Outermost: every response gets the id, timing covers the whole stack,
    # and compression sees the final body (static files from WhiteNoise too).
    "resilience.ops.middleware.RequestIdMiddleware",
    "resilience.ops.middleware.RequestTimingMiddleware",
    "resilience.ops.middleware.CompressionMiddleware",
    # Django's middleware, with its hooks run inline under ASGI (resilience.ops.inline_middleware).
    "resilience.ops.inline_middleware.InlineSecurityMiddleware",
    "resilience.ops.middleware.StaticFilesMiddleware",  # WhiteNoise, in either mode
    "resilience.ops.inline_middleware.InlineSessionMiddleware",
    "resilience.ops.inline_middleware.InlineCommonMiddleware",
    "resilience.ops.inline_middleware.InlineCsrfViewMiddleware",
    "resilience.ops.inline_middleware.InlineAuthenticationMiddleware",
    "resilience.ops.inline_middleware.InlineMessageMiddleware",
    "resilience.ops.inline_middleware.InlineXFrameOptionsMiddleware",
    "simple_history.middleware.HistoryRequestMiddleware",
    # Last, as django-axes asks: turns a lockout into its 429 page.
    "axes.middleware.AxesMiddleware",
]
# Token calls at the AI doors (/v1/, /api/ai/generate: an API token, no session cookie) run through these only
# (project/asgi_handler.py): what a browser session alone uses is left out.
DOOR_MIDDLEWARE = [path for path in MIDDLEWARE if path.rsplit(".", 1)[-1] not in {
    "StaticFilesMiddleware", "InlineSessionMiddleware", "InlineCsrfViewMiddleware",
    "InlineAuthenticationMiddleware", "InlineMessageMiddleware", "HistoryRequestMiddleware",
    "AxesMiddleware"}]

ROOT_URLCONF = "project.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "aigen.edge.context_processors.config_warnings",
            ],
        },
    },
]

WSGI_APPLICATION = "project.wsgi.application"

DATABASES = {
    "default": env.db_url("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
}
DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("DB_CONN_MAX_AGE", default=60))
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql" and env.bool("DB_POOL", default=True):
    # Under ASGI every request runs its sync work in a thread of its own:
    # persistent per-thread connections would pile up, a pool shares a few.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": env.int("DB_POOL_MIN", default=2), "max_size": env.int("DB_POOL_MAX", default=20),
        "timeout": env.float("DB_POOL_TIMEOUT", default=10.0)}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # Bounded waits on PostgreSQL: a connection attempt (TCP and the startup
    # exchange) gives up after DB_CONNECT_TIMEOUT seconds, a statement is
    # cancelled by the server after DB_STATEMENT_TIMEOUT seconds (0: never),
    # and an established connection whose peer stops acknowledging (a network
    # drop) is closed by the kernel after DB_TCP_USER_TIMEOUT seconds, with
    # keepalives probing idle connections. A request thread never waits on the
    # database forever; /readyz answers 503 meanwhile.
    _db_options = DATABASES["default"].setdefault("OPTIONS", {})
    _db_options.setdefault("connect_timeout", env.int("DB_CONNECT_TIMEOUT", default=5))
    _statement_ms = int(env.float("DB_STATEMENT_TIMEOUT", default=30.0) * 1000)
    _db_options.setdefault("options", f"-c statement_timeout={_statement_ms}")
    _db_options.setdefault("tcp_user_timeout", int(env.float("DB_TCP_USER_TIMEOUT", default=30.0) * 1000))
    _db_options.setdefault("keepalives", 1)
    _db_options.setdefault("keepalives_idle", 30)
    _db_options.setdefault("keepalives_interval", 10)
    _db_options.setdefault("keepalives_count", 3)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache -----------------------------------------------------------------
# One backend for everything: django-redis with a local-memory fallback when
# REDIS_URL is set, plain local memory otherwise (see resilience/cache/).
REDIS_URL = env.str("REDIS_URL", default="")
CACHE_KEY_PREFIX = env.str("CACHE_KEY_PREFIX", default="rsl")
CACHE_DEFAULT_TIMEOUT = env.int("CACHE_DEFAULT_TIMEOUT", default=300)
CACHES = {
    "default": {
        "BACKEND": "resilience.cache.FallbackCache",
        "LOCATION": REDIS_URL,
        "TIMEOUT": CACHE_DEFAULT_TIMEOUT,
        "KEY_PREFIX": CACHE_KEY_PREFIX,
        "OPTIONS": {
            "PROBE_INTERVAL": env.float("CACHE_PROBE_INTERVAL", default=5.0),
            "SOCKET_CONNECT_TIMEOUT": env.float("CACHE_CONNECT_TIMEOUT", default=0.25),
            "SOCKET_TIMEOUT": env.float("CACHE_SOCKET_TIMEOUT", default=0.25),
            "STATS_FLUSH_INTERVAL": env.float("CACHE_STATS_FLUSH_INTERVAL", default=1.0),
            "MAX_ENTRIES": env.int("CACHE_LOCAL_MAX_ENTRIES", default=10000),
        },
    },
}

# --- Auth, i18n, static --------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "/admin/login/"

# --- Login throttle (django-axes) ----------------------------------------------------
# Password logins (the admin's, any session login) lock out after LOGIN_FAILURE_LIMIT
# failures per username or per client address (either one), for LOGIN_COOLOFF_MINUTES;
# `manage.py axes_reset_username NAME` / `axes_reset_ip ADDRESS` / `axes_reset` lift it.
# The address is REMOTE_ADDR (the client's behind a proxy only when the server trusts that
# proxy's X-Forwarded-For: uvicorn's forwarded_allow_ips, gunicorn.conf.py).
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # first: refuses a locked-out login before the password is checked
    "django.contrib.auth.backends.ModelBackend",
]
AXES_ENABLED = env.bool("LOGIN_THROTTLE", default=True)
AXES_FAILURE_LIMIT = env.int("LOGIN_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(minutes=env.float("LOGIN_COOLOFF_MINUTES", default=15.0))
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_RESET_ON_SUCCESS = True
# One row per (username, address) with failures, dropped after the cool-off; no row
# per successful login (a table that would grow with traffic).
AXES_DISABLE_ACCESS_LOG = True
AXES_IPWARE_META_PRECEDENCE_ORDER = ("REMOTE_ADDR",)
AXES_VERBOSE = False  # its start-up banner would precede every command's output

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Serve straight from the apps' static folders, so the offline API docs work
# under runserver and gunicorn alike without a collectstatic step.
WHITENOISE_USE_FINDERS = True
# STATIC_ROOT only exists after collectstatic (make serve); until then the
# finders serve everything and whitenoise's "No directory at" is noise.
warnings.filterwarnings("ignore", message="No directory at: ")
WHITENOISE_AUTOREFRESH = DEBUG

# --- REST framework --------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "aigen.edge.auth.BearerTokenAuthentication",
        "aigen.edge.auth.ThrottledTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    # Size limit (413) and nesting depth (400) for every view (resilience.ops.parsers).
    "DEFAULT_PARSER_CLASSES": ["resilience.ops.parsers.LimitedJSONParser"],
    "EXCEPTION_HANDLER": "resilience.ops.api.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_THROTTLE_RATES": {
        "generate": env.str("AI_GENERATE_THROTTLE", default="60/min"),
        # Failed token checks per client address (resilience.ops.throttling); past it, 429.
        "auth_failure": env.str("AUTH_FAILURE_THROTTLE", default="30/min") or None,
    },
}
if DEBUG:
    REST_FRAMEWORK["DEFAULT_RENDERER_CLASSES"].append("rest_framework.renderers.BrowsableAPIRenderer")

SPECTACULAR_SETTINGS = {
    "TITLE": "Resilience gateway API",
    "DESCRIPTION": "Upstream policies, live state and statistics; AI text generation.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # The schema and the docs are public (they expose no data); the API is not.
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    # Several `state` fields with different choice sets: each set named once.
    "ENUM_NAME_OVERRIDES": {
        "BreakerStateEnum": "resilience.ops.serializers.BREAKER_STATES",
        "AlertStateEnum": "resilience.alerts.models.Alert.State",
    },
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "resilience.ops.serializers.error_responses_hook",
    ],
}

# Request bodies above this size are refused with 413 (the API's own limit).
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("MAX_REQUEST_BYTES", default=256 * 1024)

# --- Apps ------------------------------------------------------------------------
RESILIENCE = {
    "CALL_LOG_RETENTION_DAYS": env.int("CALL_LOG_RETENTION_DAYS", default=7),
    "ROLLUP_MINUTE_RETENTION_DAYS": env.int("ROLLUP_MINUTE_RETENTION_DAYS", default=3),
    "ROLLUP_HOUR_RETENTION_DAYS": env.int("ROLLUP_HOUR_RETENTION_DAYS", default=90),
    "ROLLUP_DAY_RETENTION_DAYS": env.int("ROLLUP_DAY_RETENTION_DAYS", default=730),
    "PRUNE_BATCH_SIZE": env.int("PRUNE_BATCH_SIZE", default=5000),
    "ROLLUP_PENDING_MAX": env.int("ROLLUP_PENDING_MAX", default=5000),
    "CALL_LOG_FLUSH_INTERVAL": env.float("CALL_LOG_FLUSH_INTERVAL", default=1.0),
    "CALL_LOG_BUFFER_MAX": env.int("CALL_LOG_BUFFER_MAX", default=500),
    "POLICY_CHECK_INTERVAL": env.float("POLICY_CHECK_INTERVAL", default=1.0),
    "HTTP_CACHE_NEAR_SECONDS": env.float("HTTP_CACHE_NEAR_SECONDS", default=1.0),
    "METRICS_TOKEN": env.str("METRICS_TOKEN", default=""),
    # Proxies whose X-Forwarded-For names the client (addresses or CIDRs); empty: none.
    # gunicorn.conf.py reads the same variable for uvicorn's forwarded_allow_ips.
    "TRUSTED_PROXIES": env.list("TRUSTED_PROXIES", default=[]),
    "METRICS_ALLOWED_ADDRESSES": env.list("METRICS_ALLOWED_ADDRESSES", default=[]),
    "SEND_TIMEOUT": env.float("SEND_TIMEOUT", default=30.0),
    "SLOW_REQUEST_SECONDS": env.float("SLOW_REQUEST_SECONDS", default=1.0),
    "COMPRESS_MIN_SIZE": env.int("COMPRESS_MIN_BYTES", default=1024),
    # The variable prometheus_client itself reads in every worker (multiprocess mode).
    "METRICS_MULTIPROC_DIR": env.str("PROMETHEUS_MULTIPROC_DIR", default=""),
    # `migrate` seeds the built-in upstreams (as `seed_upstreams` does).
    "SEED_ON_MIGRATE": env.bool("SEED_UPSTREAMS_ON_MIGRATE", default=True),
    # The flaky demo upstream (/demo/flaky/...) is served with DEBUG on, or with this.
    "DEMO_ENABLED": env.bool("DEMO_ENABLED", default=False),
    # Upstream credentials: see the end of this file.
    # Jobs: finished job rows, probe history older than this are pruned.
    "JOB_RETENTION_DAYS": env.int("JOB_RETENTION_DAYS", default=7),
    "PROBE_HISTORY_KEEP": env.int("PROBE_HISTORY_KEEP", default=500),
    # /readyz is "degraded" when a due job waited this long (no worker takes jobs); 0: off.
    "JOBS_STALL_SECONDS": env.float("JOBS_STALL_SECONDS", default=300.0),
    # Endpoint limits: the window rpm_limit and tpm_limit count over (seconds), the completion
    # tokens a call reserves when it names no max_tokens.
    "QUOTA_WINDOW_SECONDS": env.float("QUOTA_WINDOW_SECONDS", default=60.0),
    "QUOTA_MARGIN_SECONDS": env.float("QUOTA_MARGIN_SECONDS", default=0.25),
    "QUOTA_SLICES": env.int("QUOTA_SLICES", default=10),
    "QUOTA_DEFAULT_MAX_TOKENS": env.int("QUOTA_DEFAULT_MAX_TOKENS", default=1024),
    # Far from its limits, one admission reserves up to this many requests for its worker's next calls.
    "QUOTA_LEASE": env.int("QUOTA_LEASE", default=16),
}

# The advisor (resilience.advisor.conf): suggestion kinds applied without a person (none by default).
RESILIENCE_ADVISOR = {
    "AUTO_APPLY_KINDS": env.list("ADVISOR_AUTO_APPLY", default=[]),
}

# Alerts (resilience.alerts.conf): evaluation interval and where notifications go.
RESILIENCE_ALERTS = {
    "EVALUATE_INTERVAL": env.int("ALERTS_EVALUATE_INTERVAL", default=15),
    "WEBHOOK_URL": env.str("ALERT_WEBHOOK_URL", default=""),
    "WEBHOOK_SECRET": env.str("ALERT_WEBHOOK_SECRET", default=""),
    "SLACK_WEBHOOK_URL": env.str("ALERT_SLACK_WEBHOOK_URL", default=""),
    "EMAIL_TO": env.list("ALERT_EMAIL_TO", default=[]),
    "RETENTION_DAYS": env.int("ALERT_RETENTION_DAYS", default=30),
}
# Mail (alert notifications by email): EMAIL_URL such as smtp+tls://user:password@host:587.
vars().update(env.email_url("EMAIL_URL", default="smtp://localhost:25"))
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="gateway@localhost")
# A configuration file (manage.py config_export's YAML) applied when the server starts.
CONFIG_FILE = env.str("CONFIG_FILE", default="")

AIGEN = {
    # Read as a credential: the `openai` upstream may name it (it is declared, not a deploy variable).
    "OPENAI_API_KEY": env.credential("OPENAI_API_KEY"),
    # Seeds the `openai` upstream (empty: OpenAI's own URL); the stored policy wins after.
    "OPENAI_BASE_URL": env.str("OPENAI_BASE_URL", default=""),
    "MODEL": env.str("AI_MODEL", default="gpt-4o-mini"),
    # Seconds an answer is cached when its registry section names no cache_ttl.
    "CACHE_TTL": env.int("AI_CACHE_TTL", default=24 * 3600),
    # Longest wait for an identical request already generating (seconds).
    "SINGLE_FLIGHT_TIMEOUT": env.float("AI_SINGLE_FLIGHT_TIMEOUT", default=120.0),
    # Generation records are bulk-written this often (seconds) off the request path.
    "RECORD_FLUSH_INTERVAL": env.float("AI_RECORD_FLUSH_INTERVAL", default=1.0),
    # Generation records older than this (days) are pruned (prune_telemetry, the prune job).
    "GENERATION_RETENTION_DAYS": env.int("AI_GENERATION_RETENTION_DAYS", default=30),
    # Seconds a worker may keep a token's user before re-reading the shared token generation.
    "TOKEN_CHECK_INTERVAL": env.float("TOKEN_CHECK_INTERVAL", default=0.5),
    # Far from a caller's throttle limit a worker counts up to this many requests in one round trip.
    "THROTTLE_LEASE": env.int("AI_THROTTLE_LEASE", default=16),
    # Caller limits (aigen.generation.quotas): tokens reserved for a call naming no max_tokens,
    # and seconds before an unsettled reservation (its worker died) is released.
    "QUOTA_DEFAULT_MAX_TOKENS": env.int("QUOTA_DEFAULT_MAX_TOKENS", default=1024),
    "QUOTA_RESERVATION_SECONDS": env.int("QUOTA_RESERVATION_SECONDS", default=300),
    # The usage ledger (aigen.generation.ledger): flushed this often (seconds), kept this many days.
    "USAGE_FLUSH_INTERVAL": env.float("USAGE_FLUSH_INTERVAL", default=1.0),
    "USAGE_RETENTION_DAYS": env.int("USAGE_RETENTION_DAYS", default=400),
}

# --- Jobs (resilience.jobs) ------------------------------------------------------
# Django's tasks API (django-tasks on 5.2). "database" (default): the job table
# in DATABASE_URL, run by `manage.py jobs_worker`; "rq": RQ on REDIS_URL (or
# JOBS_REDIS_URL), run by the same command. Queues are the three priorities.
JOBS_BACKEND = env.str("JOBS_BACKEND", default="database")
JOBS_QUEUES = ["high", "default", "low"]
JOBS_REDIS_URL = env.str("JOBS_REDIS_URL", default=REDIS_URL or "redis://127.0.0.1:6379/0")
TASKS = {
    "default": {
        "BACKEND": ("django_tasks_rq.RQBackend" if JOBS_BACKEND == "rq"
                    else "django_tasks_db.DatabaseBackend"),
        "QUEUES": JOBS_QUEUES,
    },
}
RQ_QUEUES = {name: {"URL": JOBS_REDIS_URL, "DEFAULT_TIMEOUT": 3600} for name in JOBS_QUEUES}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    # The process id tells the workers' lines apart (each worker falls back
    # to memory on its own when Redis goes away, and says so once).
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s [%(process)d] %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        # Django's default config gives "django" a console handler of its own
        # (DEBUG only) on top of propagating to ours: every django.request
        # warning was printed twice. One handler, the root's.
        "django": {"handlers": [], "level": "INFO", "propagate": True},
        "django.db.backends": {"level": "WARNING"},
        # The openai SDK's transport logs each request against its placeholder
        # host; the resilient client's call log records the real call.
        "httpx2": {"level": "WARNING"},
        # Its DEBUG trace prints every response's headers, which a provider
        # may fill with the key it was sent (an `X-Echo: Bearer sk-...`).
        "httpcore2": {"level": "INFO"},
        # django-axes logs every login attempt and clean-up at INFO; lockouts are warnings.
        "axes": {"level": "WARNING"},
    },
}

# --- Upstream credentials (resilience.conf `credential_refusal`) -------------------
# A policy (Upstream.auth_env_var, Endpoint.auth_env_var) may name only a
# variable declared as an upstream credential: one starting with
# UPSTREAM_CREDENTIAL_PREFIX, or listed in UPSTREAM_CREDENTIAL_VARIABLES (plus
# those this file reads as credentials: OPENAI_API_KEY). Every variable this
# file reads is the deploy's own and refused by name whatever is declared
# (env.read: complete here, at the end). The client is handed only the
# declared variables, never the whole environment.
RESILIENCE["CREDENTIAL_PREFIX"] = env.str("UPSTREAM_CREDENTIAL_PREFIX", default="UPSTREAM_")
RESILIENCE["CREDENTIAL_VARIABLES"] = sorted(
    {*env.credentials, *env.list("UPSTREAM_CREDENTIAL_VARIABLES", default=[])})
# Fernet keys sealing OAuth2 accounts' tokens (comma-separated; the first encrypts).
RESILIENCE["CREDENTIALS_KEYS"] = env.list("CREDENTIALS_KEYS", default=[])
# The live set: a read added below this block is refused too.
RESILIENCE["DEPLOY_VARIABLES"] = env.read
RESILIENCE["SECRETS"] = CredentialVariables(
    os.environ, prefix=RESILIENCE["CREDENTIAL_PREFIX"],
    names=frozenset(RESILIENCE["CREDENTIAL_VARIABLES"]), refused=env.read)
