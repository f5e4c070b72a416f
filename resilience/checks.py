"""System checks for production-unsafe or broken configuration.

Run by `manage.py` commands and, through `project.startup`, by the WSGI/ASGI
entry points, so a bad configuration refuses to serve.
"""
from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "[::1]", "::1"}


@checks.register(checks.Tags.security, deploy=True)
def check_secret_key(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """A deployment check: the servers run it (`project.startup`), and so does
    `manage.py check --deploy`; other management commands run with the
    development key (they serve nothing, so there is nothing to sign)."""
    dev_key = getattr(settings, "DEV_SECRET_KEY", None)
    try:
        secret = settings.SECRET_KEY
    except ImproperlyConfigured:  # Django refuses to hand out an empty key
        secret = ""
    if not settings.DEBUG and (not secret or dev_key == secret):
        return [checks.Error(
            "SECRET_KEY is not set and DEBUG is off.",
            hint="Set the SECRET_KEY environment variable to a long random string "
                 "(or DEBUG=true for development).",
            id="resilience.E001",
        )]
    return []


@checks.register(checks.Tags.security)
def check_debug_hosts(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    exposed = [h for h in settings.ALLOWED_HOSTS if h not in LOOPBACK_HOSTS]
    if settings.DEBUG and exposed:
        return [checks.Error(
            f"DEBUG is on while ALLOWED_HOSTS serves non-loopback hosts {exposed}.",
            hint="Turn DEBUG off, or restrict ALLOWED_HOSTS to loopback for development.",
            id="resilience.E002",
        )]
    return []


@checks.register(checks.Tags.caches)
def check_cache(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    errors: list[checks.CheckMessage] = []
    redis_url = getattr(settings, "REDIS_URL", "")
    if redis_url and urlsplit(redis_url).scheme not in {"redis", "rediss", "unix"}:
        errors.append(checks.Error(
            f"REDIS_URL has unsupported scheme {urlsplit(redis_url).scheme!r}.",
            hint="Use redis://host:port/db, rediss:// or unix://.",
            id="resilience.E003",
        ))
    options = settings.CACHES.get("default", {}).get("OPTIONS", {})
    for name in ("PROBE_INTERVAL", "SOCKET_CONNECT_TIMEOUT", "SOCKET_TIMEOUT", "STATS_FLUSH_INTERVAL"):
        value = options.get(name)
        if value is not None and not float(value) > 0:
            errors.append(checks.Error(
                f"Cache option {name} must be a positive number of seconds, not {value!r}.",
                id="resilience.E004",
            ))
    return errors


@checks.register(checks.Tags.security)
def check_demo(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    resilience = getattr(settings, "RESILIENCE", {}) or {}
    if resilience.get("DEMO_ENABLED") and not settings.DEBUG:
        return [checks.Warning(
            "DEMO_ENABLED serves the flaky demo upstream (/demo/flaky/) with DEBUG off.",
            hint="Unset DEMO_ENABLED outside a demo.",
            id="resilience.W001",
        )]
    return []
