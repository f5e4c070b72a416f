"""ASGI entry point (`make serve`); like wsgi.py it refuses to start on failed
system checks."""
import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
django.setup(set_prefix=False)  # what django.core.asgi.get_asgi_application does

from project.asgi_handler import GatewayASGIHandler  # noqa: E402

application = GatewayASGIHandler()

from project import asgi_signals  # noqa: E402
from project.startup import announce, run_startup_checks  # noqa: E402

run_startup_checks()
announce()
asgi_signals.install()


def _prepare() -> None:
    """Load what the first requests would otherwise load under load."""
    from aigen.generation.providers import provider_prepare
    from aigen.generation.registry import get_registry
    from resilience.exceptions import UnknownUpstream

    get_registry()
    try:
        provider_prepare()
    except UnknownUpstream:  # not seeded yet: the first call reports it
        pass


_prepare()
