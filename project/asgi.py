"""ASGI entry point (`make serve`); like wsgi.py it refuses to start on failed
system checks."""
import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
# Under ASGI a request's synchronous work runs in a thread that ends with the request, so a
# persistent connection (CONN_MAX_AGE above 0) is never reused: it stayed open after its thread
# ended, until the garbage collector freed its wrapper (a server without the pool held up to 42
# PostgreSQL connections over 200 sequential API requests; 2 with 0). As Django's documentation
# says, no persistent connections under ASGI; the pool (DB_POOL) is how connections are reused.
os.environ.setdefault("DB_CONN_MAX_AGE", "0")
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
