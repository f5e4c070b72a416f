"""`manage.py runserver` (`make run`): the project's ASGI application under
uvicorn, with Django's autoreloader, static files and start-up checks.

The AI views are async and their answers are async streams: Django's WSGI
development server consumed them synchronously (one event loop per chunk,
"StreamingHttpResponse must consume asynchronous iterators"), and a /v1
stream after a few earlier calls could stall until the stream supervisor
gave up. Served here as `make serve` serves them: the same ASGI application
(project.asgi: the door, the async views), one event loop, no warning.

`--wsgi` keeps Django's WSGI server (with the door's handler,
project.devserver) for debugging a sync-only problem.

On failure: the port in use or not allowed is one line on stderr and exit 1,
as Django's runserver does.
"""
from __future__ import annotations

import errno
import os
import sys
from typing import Any

import uvicorn
from django.conf import settings
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.contrib.staticfiles.management.commands.runserver import Command as StaticRunserver
from django.db import connections
from django.utils import autoreload

from project.devserver import DoorWSGIServer

_BIND_ERRORS = {
    errno.EACCES: "You don't have permission to access that port.",
    errno.EADDRINUSE: "That port is already in use.",
    errno.EADDRNOTAVAIL: "That IP address can't be assigned to.",
}


class Command(StaticRunserver):
    help = "Development server: the ASGI application under uvicorn, reloaded on code changes."
    server_cls = DoorWSGIServer

    def add_arguments(self, parser: Any) -> None:
        super().add_arguments(parser)
        parser.add_argument("--wsgi", action="store_true",
                            help="Serve with Django's WSGI development server instead (sync views only).")

    def inner_run(self, *args: Any, **options: Any) -> None:
        if options.get("wsgi"):
            return super().inner_run(*args, **options)
        autoreload.raise_last_exception()
        if not options["skip_checks"]:
            self.stdout.write("Performing system checks...\n\n")
            self.check(**{**super().get_check_kwargs(options), "display_num_errors": True})
        self.check_migrations()
        for conn in connections.all(initialized_only=True):
            conn.close()
        config = uvicorn.Config(self._asgi_application(options), host=self.addr, port=int(self.port),
                                lifespan="off", log_config=None, access_log=False)
        host = f"[{self.addr}]" if self._raw_ipv6 else self.addr
        self.stdout.write(f"Starting ASGI development server (uvicorn) at http://{host}:{self.port}/\n"
                          "Quit the server with CONTROL-C.\n")
        try:
            uvicorn.Server(config).run()
        except OSError as err:
            self.stderr.write(f"Error: {_BIND_ERRORS.get(err.errno, err)}")
            os._exit(1)  # sys.exit does not leave the autoreloader's thread
        except KeyboardInterrupt:
            sys.exit(0)

    def _asgi_application(self, options: dict[str, Any]) -> Any:
        # Imported here, not at the top: project.asgi runs the start-up checks
        # and announces the provider, which only a starting server should do.
        from project.asgi import application

        if options["use_static_handler"] and (settings.DEBUG or options["insecure_serving"]):
            return ASGIStaticFilesHandler(application)
        return application
