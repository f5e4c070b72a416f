"""`manage.py runserver` (`make run`) behind the door (project.door).

Django's development server drains whatever body the application left unread
before it answers the next request on the connection: one `read()` of the
whole declared length, into memory (a `Content-Length: 1073741824` that the
door refused with 413 would still be read, all of it). Here an unread body is
never drained: the connection is closed after the answer instead. A body the
application read in full (every normal request) keeps the connection alive.

Chunked request bodies are not supported by this server (nor by Django's):
the application sees none, and the connection is closed after the answer so
the chunks are never parsed as a next request.
"""
from __future__ import annotations

from django.core.servers import basehttp

from project import door


class _CountingReader:
    """The connection's reader, counting the body bytes the application took."""

    def __init__(self, rfile) -> None:
        self._rfile = rfile
        self.taken = 0

    def read(self, size: int = -1) -> bytes:
        data = self._rfile.read(size)
        self.taken += len(data)
        return data

    def readline(self, size: int = -1) -> bytes:
        data = self._rfile.readline(size)
        self.taken += len(data)
        return data


class DoorServerHandler(basehttp.ServerHandler):
    def __init__(self, stdin, stdout, stderr, environ, **kwargs) -> None:
        self._counted = _CountingReader(stdin)
        self._declared = door.declared_length(environ.get("CONTENT_LENGTH")) or 0
        self._chunked = bool(environ.get("HTTP_TRANSFER_ENCODING"))
        super().__init__(self._counted, stdout, stderr, environ, **kwargs)

    def cleanup_headers(self) -> None:
        super().cleanup_headers()
        if self._chunked or self._counted.taken < self._declared:
            # Decided before the headers go out, so the client is told too.
            self.headers["Connection"] = "close"
            self.request_handler.close_connection = True

    def close(self) -> None:
        # Not Django's close: it reads the rest of the body (all of it, at once).
        super(basehttp.ServerHandler, self).close()


class DoorRequestHandler(basehttp.WSGIRequestHandler):
    def handle_one_request(self) -> None:
        """Django's (5.2), with the door's server handler."""
        self.raw_requestline = self.rfile.readline(65537)
        if len(self.raw_requestline) > 65536:
            self.requestline = ""
            self.request_version = ""
            self.command = ""
            self.send_error(414)
            return
        if not self.parse_request():
            return
        handler = DoorServerHandler(self.rfile, self.wfile, self.get_stderr(), self.get_environ())
        handler.request_handler = self
        handler.run(self.server.get_app())


class DoorWSGIServer(basehttp.WSGIServer):
    """Django's development server with `DoorRequestHandler` for every connection."""

    def __init__(self, server_address, handler_class, *args, **kwargs) -> None:
        super().__init__(server_address, DoorRequestHandler, *args, **kwargs)
