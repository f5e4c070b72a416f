"""WSGI entry point. Runs the system checks first so an unsafe configuration
refuses to serve instead of serving quietly (gunicorn does not run them)."""
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
application = get_wsgi_application()

from project.startup import announce, run_startup_checks  # noqa: E402

run_startup_checks()
announce()
