"""Fail loudly at start: run Django's system checks for servers that skip them."""
from __future__ import annotations

from django.core import checks
from django.core.exceptions import ImproperlyConfigured


def run_startup_checks() -> None:
    """Raise ImproperlyConfigured when any system check reports an error."""
    errors = [m for m in checks.run_checks(include_deployment_checks=False) if m.is_serious()]
    if errors:
        raise ImproperlyConfigured("; ".join(f"{m.id}: {m.msg}" for m in errors))
