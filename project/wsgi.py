"""WSGI entry point. Runs the system checks first so an unsafe configuration
refuses to serve instead of serving quietly (gunicorn does not run them).
Request bodies over the limit are refused at the door (project.door)."""
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
application = get_wsgi_application()

from project.door import WSGIDoor  # noqa: E402
from project.startup import announce, run_startup_checks  # noqa: E402

run_startup_checks()
announce()
application = WSGIDoor(application)
