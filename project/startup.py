"""Fail loudly at start: the checks a server must pass before it serves.

Management commands run Django's system checks themselves; the servers
(gunicorn through `project.asgi`/`project.wsgi`, `manage.py runserver`) also
need what only serving needs: a real SECRET_KEY when DEBUG is off
(`resilience.E001`, a deployment check, so `manage.py check --deploy` reports
it too). `python -m project.startup` runs them in a process of its own and
prints one line per problem, no traceback: `make serve` and gunicorn's
`on_starting` hook call it before anything serves.
"""
from __future__ import annotations

import os
import sys

from django.core import checks
from django.core.exceptions import ImproperlyConfigured


def serving_problems() -> list[checks.CheckMessage]:
    """The serious problems that forbid serving: every system check's errors
    plus the serving-only ones (the secret key)."""
    from resilience.checks import check_credentials_keys, check_secret_key

    messages = checks.run_checks(include_deployment_checks=False) + check_secret_key()
    messages += check_credentials_keys()
    return [m for m in messages if m.is_serious()]


def problem_line(message: checks.CheckMessage) -> str:
    hint = f" {message.hint}" if message.hint else ""
    return f"{message.id}: {message.msg}{hint}"


def run_startup_checks() -> None:
    """Raise ImproperlyConfigured when a server may not start (the entry points call this)."""
    problems = serving_problems()
    if problems:
        raise ImproperlyConfigured("; ".join(problem_line(m) for m in problems))


def announce() -> None:
    """Log once, when a server starts, what serves: the AI provider and the
    cache backend (management commands keep their output to themselves)."""
    import logging

    from django.core.cache import cache

    from aigen.generation.providers import provider_announce

    provider_announce()
    _announce_base_url()
    _announce_refused_credentials()
    name = getattr(cache, "backend_name", type(cache).__name__)
    logging.getLogger("resilience.cache").info(
        "cache: %s%s", name, ", local-memory fallback" if getattr(cache, "redis_configured", False)
        else " (no REDIS_URL set)")


def _announce_base_url() -> None:
    import logging

    from django.db import DatabaseError

    from aigen.conf import base_url_disagreement

    try:
        disagreement = base_url_disagreement()
    except DatabaseError:  # not migrated yet: nothing is stored to disagree with
        return
    if disagreement is not None:
        logging.getLogger("aigen.conf").warning("%s", disagreement.message)


def _announce_refused_credentials() -> None:
    import logging

    from django.db import DatabaseError

    from resilience.ops.services import credentials_refused

    try:
        refused = credentials_refused()
    except DatabaseError:  # not migrated yet: nothing stored
        return
    for line in refused:
        logging.getLogger("resilience.credentials").warning("credential refused, nothing is sent: %s", line)


def serve_or_exit() -> None:
    """Exit with status 1 and one line per problem when a server may not start."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    try:
        django.setup()
    except OSError as err:  # e.g. PROMETHEUS_MULTIPROC_DIR names a folder that does not exist
        sys.stderr.write(f"cannot serve: {err.strerror}: {err.filename} (a folder named in the "
                         f"environment, such as PROMETHEUS_MULTIPROC_DIR, must exist)\n")
        raise SystemExit(1) from None
    problems = serving_problems()
    for message in problems:
        sys.stderr.write(f"cannot serve: {problem_line(message)}\n")
    if problems:
        raise SystemExit(1)


if __name__ == "__main__":
    serve_or_exit()
