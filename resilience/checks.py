"""System checks for production-unsafe or broken configuration.

Run by `manage.py` commands and, through `project.startup`, by the WSGI/ASGI
entry points, so a bad configuration refuses to serve.
"""
from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core import checks
from django.core.checks.security import base as security_checks
from django.core.checks.security import csrf as csrf_checks
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.csrf import CsrfViewMiddleware
from django.middleware.security import SecurityMiddleware
from django.utils.module_loading import import_string

from resilience.conf import resilience_settings
from resilience.models import Endpoint

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
    if not settings.DEBUG and weak_secret(secret):
        base = security_checks
        return [checks.Error(
            f"SECRET_KEY is too weak to serve with DEBUG off: it needs at least {base.SECRET_KEY_MIN_LENGTH} "
            f"characters, {base.SECRET_KEY_MIN_UNIQUE_CHARACTERS} of them different, and no "
            f"'{base.SECRET_KEY_INSECURE_PREFIX}' prefix.",
            hint="Generate one: python -c 'import secrets; print(secrets.token_urlsafe(50))'",
            id="resilience.E005",
        )]
    return []


def weak_secret(secret: str) -> bool:
    """What Django's `check --deploy` warns of (security.W009), refused here."""
    return (len(secret) < security_checks.SECRET_KEY_MIN_LENGTH
            or len(set(secret)) < security_checks.SECRET_KEY_MIN_UNIQUE_CHARACTERS
            or secret.startswith(security_checks.SECRET_KEY_INSECURE_PREFIX))


def _has_middleware(kind: type) -> bool:
    """Whether settings.MIDDLEWARE lists `kind` or a subclass of it."""
    for path in settings.MIDDLEWARE:
        try:
            if issubclass(import_string(path), kind):
                return True
        except (ImportError, TypeError):  # an unimportable entry is Django's own error to report
            continue
    return False


@checks.register(checks.Tags.security, deploy=True)
def check_deploy_middleware(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Django's deployment checks that depend on its middleware, recognising the
    project's subclasses (Django's own compare dotted paths: security.W001-W003
    are silenced in settings, and the checks they gate are run here with
    Django's messages)."""
    messages: list[checks.CheckMessage] = []
    if not _has_middleware(SecurityMiddleware):
        messages.append(checks.Warning(security_checks.W001.msg, id="resilience.W101"))
    else:
        if not settings.SECURE_HSTS_SECONDS:
            messages.append(security_checks.W004)
        else:
            if not settings.SECURE_HSTS_INCLUDE_SUBDOMAINS:
                messages.append(security_checks.W005)
            if not settings.SECURE_HSTS_PRELOAD:
                messages.append(security_checks.W021)
        if settings.SECURE_CONTENT_TYPE_NOSNIFF is not True:
            messages.append(security_checks.W006)
        if settings.SECURE_SSL_REDIRECT is not True:
            messages.append(security_checks.W008)
        if not settings.SECURE_REFERRER_POLICY:
            messages.append(security_checks.W022)
    if not _has_middleware(XFrameOptionsMiddleware):
        messages.append(checks.Warning(security_checks.W002.msg, id="resilience.W102"))
    elif settings.X_FRAME_OPTIONS != "DENY":
        messages.append(security_checks.W019)
    if not _has_middleware(CsrfViewMiddleware):
        messages.append(checks.Warning(csrf_checks.W003.msg, id="resilience.W103"))
    elif not settings.CSRF_USE_SESSIONS and settings.CSRF_COOKIE_SECURE is not True:
        messages.append(csrf_checks.W016)
    return messages


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
def check_metrics_addresses(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Every METRICS_ALLOWED_ADDRESSES entry is an address or a network (else /metrics would fail)."""
    resilience = getattr(settings, "RESILIENCE", {}) or {}
    errors: list[checks.CheckMessage] = []
    for entry in resilience.get("METRICS_ALLOWED_ADDRESSES", []) or []:
        try:
            ipaddress.ip_network(str(entry).strip(), strict=False)
        except ValueError:
            errors.append(checks.Error(
                f"METRICS_ALLOWED_ADDRESSES entry {entry!r} is not an address or a network.",
                hint="Use addresses or networks, comma-separated: 10.0.0.5,192.168.0.0/24.",
                id="resilience.E006",
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


@checks.register(checks.Tags.security, deploy=True)
def check_credentials_keys(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """A deployment check (run by the servers through `project.startup` and by
    `check --deploy`): stored OAuth2 accounts need CREDENTIALS_KEYS outside
    DEBUG (under DEBUG a development key is derived; resilience.client.sealing).
    A database not migrated yet has no accounts to refuse."""
    if settings.DEBUG or resilience_settings.CREDENTIALS_KEYS:
        return []
    try:
        stored = Endpoint.objects.exclude(credential_kind=Endpoint.CredentialKind.ENV).exists()
    except DatabaseError:
        return []
    if not stored:
        return []
    return [checks.Error(
        "OAuth2 accounts are stored but CREDENTIALS_KEYS is not set: their tokens cannot be decrypted.",
        hint="Set CREDENTIALS_KEYS to one or more Fernet keys, comma-separated (the first encrypts).",
        id="resilience.E007")]
