"""Real HTTP servers on loopback that misbehave on purpose, for tests.

This module owns the server machinery shared by the test fakes (`HTTPFake`: a
threaded HTTP/1.1 keep-alive server on 127.0.0.1 that records every request,
counts TCP connections and peak concurrency) and the `Reply` value object that
says how to misbehave: slow headers, a slow body, Retry-After, a TCP reset,
bytes that are not HTTP, `Connection: close`. `FakeUpstream` is the scriptable
upstream API built on it; `tests.support.fake_openai` builds the fake OpenAI
server on the same machinery.

Failure behaviour: a client that disconnects mid-reply is ignored quietly; an
exception raised while building a reply (a bug in a fake) is printed by
socketserver and the client sees its connection dropped. `stop()` closes the
listening socket and every open connection and abandons replies still waiting
out a delay, so a stopped fake refuses connections at once and answers nothing.
"""
from __future__ import annotations

import json
import socket
import socketserver
import ssl
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qsl

# Starts like no HTTP version, so any HTTP client rejects the status line.
GARBAGE = b"\x00\xffNOT-HTTP garbage from a broken upstream\r\n\r\n"
#: Among a Reply's chunks: close the connection there (see `Reply.chunks`).
CUT = b"\x00cut"

ALL_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


@dataclass(frozen=True)
class Reply:
    """How the fake answers one request.

    status: the HTTP status code.
    body: bytes or str are sent as they are (str as UTF-8 text/plain); a dict or
        list is sent as JSON with content-type application/json.
    headers: extra response headers; a Content-Type or Content-Length given here
        replaces the computed one (a wrong Content-Length makes a truncated body).
    delay: seconds to wait before sending the status line (a slow upstream).
    body_delay: send the body in 4 pieces, waiting this long before each, after
        headers that already carry the full Content-Length (a slow body takes
        about 4 * body_delay).
    retry_after: value of a Retry-After header, when set.
    reset: abort the connection with a TCP RST (SO_LINGER 0, then close) after
        `delay`, sending nothing.
    malformed: send `GARBAGE`, which is not HTTP, then close the connection.
    close: send `Connection: close` and close the connection after the reply.
    chunks: when set, the body is sent with Transfer-Encoding: chunked, one HTTP
        chunk per item, waiting `body_delay` before each; `body` is ignored.
        Server-sent event streams use it. A number among the items is a pause
        of that many seconds; `CUT` closes the connection there, without the
        body's terminating chunk (a stream cut mid-way). The last item, when it
        is a chunk, goes out in one write with the terminating chunk.
    """

    status: int = 200
    body: bytes | str | dict | list = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    body_delay: float = 0.0
    retry_after: str | None = None
    reset: bool = False
    malformed: bool = False
    close: bool = False
    chunks: tuple[bytes | float, ...] | None = None

    def payload(self) -> tuple[bytes, str | None]:
        """The encoded body and the content type it implies (None for no body)."""
        if isinstance(self.body, dict | list):
            return json.dumps(self.body).encode(), "application/json"
        if isinstance(self.body, str):
            return self.body.encode(), "text/plain; charset=utf-8"
        return bytes(self.body), ("application/octet-stream" if self.body else None)


class Headers(dict):
    """Request headers keyed by lower-case name, looked up case-insensitively."""

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__((name.lower(), value) for name, value in items)

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(name.lower())

    def get(self, name: str, default: Any = None) -> Any:
        return super().get(name.lower(), default)


@dataclass(frozen=True)
class Recorded:
    """One request as the fake received it.

    path excludes the query string, which is kept raw in `query`; `at` is
    time.monotonic() when the request was fully read; `connection_id` is unique
    per TCP connection, so requests sharing it came over one kept-alive socket.
    """

    method: str
    path: str
    query: str
    headers: Headers
    body: bytes
    at: float
    connection_id: int

    @property
    def params(self) -> dict[str, str]:
        """The query string parsed (the last value wins for a repeated name)."""
        return dict(parse_qsl(self.query, keep_blank_values=True))

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body parsed as JSON; raises ValueError when it is not JSON."""
        return json.loads(self.body)


class _Dropped(Exception):
    """The handler aborted its connection on purpose; nothing more to send."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so tests can watch client pooling
    server: _Server
    # An idle kept-alive connection is dropped after this, so a leaked client
    # cannot pin a handler thread for the rest of the run.
    timeout = 30

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; with Nagle's algorithm
        # the second one waits for a delayed ACK, adding ~40 ms to every reply.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connection_id = self.server.fake._connection_opened(self.connection)

    def handle(self) -> None:
        try:
            super().handle()
        except (OSError, _Dropped):
            # The client went away (broken pipe, reset, timeout), the fake was
            # stopped under us, or we reset the connection on purpose.
            self.close_connection = True

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.fake._connection_closed(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # test output stays clean; the fake's records are the log

    def _dispatch(self) -> None:
        fake = self.server.fake
        body = self._read_body()
        path, _, query = self.path.partition("?")
        request = Recorded(
            method=self.command, path=path, query=query, headers=Headers(self.headers.items()),
            body=body, at=time.monotonic(), connection_id=self.connection_id,
        )
        fake._request_started(request)
        try:
            self._send(fake.respond(request))
        finally:
            fake._request_finished()

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _dispatch

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(parts)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, reply: Reply) -> None:
        fake = self.server.fake
        fake._pause(reply.delay)
        if reply.reset:
            self._reset()
            raise _Dropped
        if reply.malformed:
            self.wfile.write(GARBAGE)
            self.close_connection = True
            return
        body, content_type = reply.payload()
        given = {name.lower() for name in reply.headers}
        self.send_response(reply.status)
        if content_type and "content-type" not in given:
            self.send_header("Content-Type", content_type)
        if reply.retry_after is not None:
            self.send_header("Retry-After", reply.retry_after)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if reply.chunks is not None:
            self.send_header("Transfer-Encoding", "chunked")
        elif "content-length" not in given:
            self.send_header("Content-Length", str(len(body)))
        if reply.close:
            self.send_header("Connection", "close")  # also sets self.close_connection
        self.end_headers()
        if self.command == "HEAD":
            return
        if reply.chunks is not None:
            last = len(reply.chunks) - 1
            for i, chunk in enumerate(reply.chunks):
                if isinstance(chunk, int | float):
                    fake._pause(chunk)
                    if i == last:
                        self.wfile.write(b"0\r\n\r\n")
                    continue
                if chunk is CUT:
                    raise _Dropped
                fake._pause(reply.body_delay)
                # The last chunk goes in one write with the body's end, as a server that ends the
                # body with its last event does; an empty chunk would end the body early.
                framed = b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunk else b""
                self.wfile.write(framed + b"0\r\n\r\n" if i == last else framed)
            if last < 0:
                self.wfile.write(b"0\r\n\r\n")
        elif reply.body_delay > 0:
            step = -(-len(body) // 4)  # ceil, so 4 pieces cover the body
            for i in range(4):
                fake._pause(reply.body_delay)
                if piece := body[i * step:(i + 1) * step]:
                    self.wfile.write(piece)
        else:
            self.wfile.write(body)

    def _reset(self) -> None:
        # Linger 0 makes close() send RST instead of FIN. The socket's fd only
        # really closes once the handler's file objects on it are closed too.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.rfile.close()
        self.wfile.close()
        self.connection.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True  # a restarted fake can take its old port back at once
    request_queue_size = 128  # bursts of parallel clients must queue, not be refused

    def __init__(self, address: tuple[str, int], fake: HTTPFake) -> None:
        self.fake = fake
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name (getfqdn), which can
        # stall on a machine with slow DNS; loopback needs no name.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return  # a client disconnect, not a bug worth a traceback
        super().handle_error(request, client_address)


class HTTPFake:
    """A threaded HTTP/1.1 server on 127.0.0.1 that answers with `respond()`.

    Subclasses override `respond(request) -> Reply`. Use as a context manager or
    call `start()`/`stop()`; after a stop, `start()` binds the same port again
    so a client configured with the old URL reaches the restarted fake.
    """

    #: Serve HTTPS with this server-side context (set before `start()`).
    tls: ssl.SSLContext | None = None

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None
        self._requests: list[Recorded] = []
        self._open: set[socket.socket] = set()
        self._last_connection_id = 0
        self._connections = 0
        self._in_flight = 0
        self._max_concurrent = 0

    # -- lifecycle --------------------------------------------------------

    def start(self) -> Self:
        """Bind (port 0 the first time, the same port afterwards) and serve in a thread."""
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = _Server(("127.0.0.1", self._port or 0), self)
        if self.tls is not None:
            self._server.socket = self.tls.wrap_socket(self._server.socket, server_side=True)
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
            name=f"{type(self).__name__}:{self._port}", daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, refuse new connections and drop open ones. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()  # wake replies waiting out a delay
        server.shutdown()
        server.server_close()
        with self._lock:
            open_sockets = list(self._open)
        for sock in open_sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # ends keep-alive reads in handler threads
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"{type(self).__name__} was never started")
        return self._port

    @property
    def root_url(self) -> str:
        """http://127.0.0.1:PORT (https:// with `tls`), without a trailing slash."""
        return f"{'https' if self.tls is not None else 'http'}://127.0.0.1:{self.port}"

    # -- records ----------------------------------------------------------

    @property
    def requests(self) -> list[Recorded]:
        """A snapshot of the requests received, oldest first."""
        with self._lock:
            return list(self._requests)

    def count(self, path: str | None = None, method: str | None = None) -> int:
        """How many requests matched `path` (without query) and `method`, None matching any."""
        return sum(
            1 for r in self.requests
            if (path is None or r.path == path) and (method is None or r.method == method.upper())
        )

    @property
    def connections(self) -> int:
        """TCP connections accepted since start (or since the last `reset()`)."""
        with self._lock:
            return self._connections

    @property
    def max_concurrent(self) -> int:
        """The peak number of requests being handled at the same time."""
        with self._lock:
            return self._max_concurrent

    def reset(self) -> None:
        """Forget recorded requests, the connection count and the concurrency peak.

        Connection ids keep increasing, so a connection opened before the reset
        never shares an id with one opened after it.
        """
        with self._lock:
            self._requests.clear()
            self._connections = 0
            self._max_concurrent = self._in_flight

    # -- to override ------------------------------------------------------

    def respond(self, request: Recorded) -> Reply:
        """The reply to `request`. Called on the request's handler thread."""
        raise NotImplementedError

    # -- called by the handler --------------------------------------------

    def _connection_opened(self, sock: socket.socket) -> int:
        with self._lock:
            self._last_connection_id += 1
            self._connections += 1
            self._open.add(sock)
            return self._last_connection_id

    def _connection_closed(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.discard(sock)

    def _request_started(self, request: Recorded) -> None:
        with self._lock:
            self._requests.append(request)
            self._in_flight += 1
            self._max_concurrent = max(self._max_concurrent, self._in_flight)

    def _request_finished(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _pause(self, seconds: float) -> None:
        if seconds > 0:
            self._stopping.wait(seconds)
        if self._stopping.is_set():
            # A stopped fake answers nothing more, like a crashed upstream:
            # the reply in progress is abandoned and its connection closed.
            raise _Dropped


class FakeUpstream(HTTPFake):
    """A scriptable upstream API.

    `script(path, *replies)` queues replies for a path: each request to it (any
    method, or only `method` when given; the query string is ignored) takes the
    next one and the last one repeats forever. Unscripted paths answer 200 with
    JSON {"path", "method", "query": {name: value}}.

        with FakeUpstream() as up:
            up.script("/items", Reply(503, retry_after="1"), Reply(200, body={"ok": True}))
            requests.get(up.url + "/items")  # 503, then 200 for every later call
    """

    def __init__(self) -> None:
        super().__init__()
        self._scripts: dict[tuple[str | None, str], deque[Reply]] = {}

    @property
    def url(self) -> str:
        """http://127.0.0.1:PORT, without a trailing slash."""
        return self.root_url

    def script(self, path: str, *replies: Reply, method: str | None = None) -> None:
        """Replace the script for `path` (and `method`, when given) with `replies`."""
        if not replies:
            raise ValueError("script() needs at least one Reply")
        with self._lock:
            self._scripts[(method.upper() if method else None, path)] = deque(replies)

    def reset(self) -> None:
        """Forget scripts as well as records."""
        with self._lock:
            self._scripts.clear()
        super().reset()

    def respond(self, request: Recorded) -> Reply:
        with self._lock:
            queue = self._scripts.get((request.method, request.path)) or self._scripts.get(
                (None, request.path))
            if queue:
                return queue.popleft() if len(queue) > 1 else queue[0]
        return Reply(200, body={"path": request.path, "method": request.method, "query": request.params})
