"""ASGI entry point (`make serve`); like wsgi.py it refuses to start on failed
system checks."""
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
application = get_asgi_application()

from project import asgi_signals  # noqa: E402
from project.startup import run_startup_checks  # noqa: E402

run_startup_checks()
asgi_signals.install()
