"""`manage.py runserver`: Django's (with static files), served by the door's
development server (project.devserver) so an unread body is never drained."""
from __future__ import annotations

from django.contrib.staticfiles.management.commands.runserver import Command as StaticRunserver

from project.devserver import DoorWSGIServer


class Command(StaticRunserver):
    server_cls = DoorWSGIServer
