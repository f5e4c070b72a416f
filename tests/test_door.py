"""The door (project.door, project.asgi_handler, project.devserver): request
bodies bounded before anything reads them, and responses nobody reads closed,
against the real servers (`make serve`'s gunicorn + uvicorn, `make run`'s
runserver) over raw sockets."""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from project import door
from project.asgi_handler import GatewayASGIHandler
from tests.support.fake_openai import MODEL_ID, FakeOpenAI
from tests.support.fake_upstream import Reply
from tests.support.live_server import LiveServer
from tests.support.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 4096
GIB = 1 << 30
BODY = {"template_id": "meeting_minutes", "section_id": "1",
        "data": {"meeting": {"title": "周例会", "date": "2026-11-28", "host": "王", "attendees": ["李"]}}}


# -- raw HTTP ------------------------------------------------------------------------------------
def _connect(port: int, *, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: the window
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    return sock


def _head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


#: Bytes received past the response a call of `_response` read (a pipelined answer), by socket.
_unread: dict[int, bytes] = {}


def _response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response off `sock` (status, lower-cased headers, body by Content-Length),
    keeping whatever follows it (a pipelined response) for the next call."""
    data = _unread.pop(sock.fileno(), b"")
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = dict((k.strip().lower(), v.strip()) for k, v in (h.split(":", 1) for h in header_lines))
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside the body"
        rest += chunk
    if rest[length:]:
        _unread[sock.fileno()] = rest[length:]
    return int(status_line.split()[1]), headers, rest[:length]


def _closed(sock: socket.socket) -> bool:
    """Whether the server closed the connection (EOF within the socket's timeout)."""
    if _unread.pop(sock.fileno(), b""):
        return False
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True


# -- the production server -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with FakeOpenAI() as provider:
        env = {"MAX_REQUEST_BYTES": str(LIMIT), "SEND_TIMEOUT": "1", "OPENAI_API_KEY": "sk-door-test",
               "OPENAI_BASE_URL": provider.url, "AI_MODEL": MODEL_ID, "AI_GENERATE_THROTTLE": "100000/min",
               "METRICS_TOKEN": "door-metrics-token"}
        setup = ("from resilience.models import Upstream;"
                 "Upstream.objects.filter(name='openai').update(bulkhead_max=2, bulkhead_wait=0.05)")
        with LiveServer(tmp_path_factory.mktemp("door"), env=env, workers=1, setup=setup) as server:
            server.auth = {"Authorization": f"Bearer {server.token('door')}"}
            yield server, provider
            assert "Traceback" not in server.output, server.output[-4000:]


@pytest.mark.parametrize(("path", "shape"), [("/api/ai/generate", "ours"),
                                             ("/v1/chat/completions", "openai")])
def test_a_huge_declared_body_is_refused_before_it_is_sent(served, path, shape):
    server, _ = served
    with _connect(server.port) as sock:
        # Expect: 100-continue: the client sends nothing until told to, so an
        # answer here proves the server decided from the headers alone.
        sock.sendall(_head("POST", path, {"Content-Type": "application/json", "Content-Length": str(GIB),
                                          "Expect": "100-continue"}))
        status, headers, body = _response(sock)
        assert status == 413  # no "100 Continue" first: the body was never asked for
        assert headers["connection"] == "close" and headers["content-type"] == "application/json"
        assert len(headers["x-request-id"]) == 32  # like every answer
        error = json.loads(body)
        if shape == "openai":
            assert error["error"]["code"] == "request_too_large" and error["error"]["type"]
            assert "success" not in error
        else:
            assert error["success"] is False and error["error"]["code"] == "request_too_large"
            assert error["error"]["limit"] == LIMIT
        assert _closed(sock)


def _scraped(server, name: str) -> float:
    text = requests.get(f"{server.url}/metrics", timeout=10,
                        headers={"Authorization": "Bearer door-metrics-token"}).text
    return next((float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")), 0.0)


def test_a_chunked_body_is_cut_off_once_it_passes_the_limit(served):
    server, _ = served
    refused_before = _scraped(server, "resilience_request_bodies_refused_total")
    with _connect(server.port) as sock:
        sock.sendall(_head("POST", "/api/ai/generate", {"Content-Type": "application/json",
                                                        "Transfer-Encoding": "chunked"}))
        sent, piece = 0, b"x" * 1024
        while sent < 64 * 1024 * 1024:  # a 64 MiB body, unless the server answers first
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            sent += len(piece)
            if select.select([sock], [], [], 0.002)[0]:
                break
        status, headers, body = _response(sock)
    assert status == 413 and json.loads(body)["error"]["code"] == "request_too_large"
    assert headers["connection"] == "close"
    assert sent < 2 * 1024 * 1024  # answered while the body was still coming, not after it
    assert _scraped(server, "resilience_request_bodies_refused_total") == refused_before + 1


def test_body_free_routes_read_no_body(served):
    server, _ = served
    for method, path, framing in [("GET", "/healthz", {"Content-Length": str(GIB)}),
                                  ("GET", "/readyz", {"Transfer-Encoding": "chunked"}),
                                  ("GET", "/metrics", {"Content-Length": str(GIB),
                                                       "Authorization": "Bearer door-metrics-token"})]:
        with _connect(server.port) as sock:
            sock.sendall(_head(method, path, framing))  # and never a byte of the body
            status, headers, body = _response(sock)
            assert status == 200, (path, body)
            assert headers["connection"] == "close"  # the unread body is left on the wire, not drained
            assert _closed(sock)
    with _connect(server.port) as sock:  # without a body the connection is kept
        sock.sendall(_head("GET", "/healthz", {}) + _head("GET", "/healthz", {}))
        assert _response(sock)[0] == 200 and _response(sock)[0] == 200


def test_a_body_exactly_at_the_limit_is_served(served):
    server, _ = served
    text = json.dumps(BODY, ensure_ascii=False).encode()
    at_limit = text + b" " * (LIMIT - len(text))  # JSON allows the trailing whitespace
    answered = requests.post(f"{server.url}/api/ai/generate", data=at_limit, headers={
        **server.auth, "Content-Type": "application/json"}, timeout=30)
    assert len(at_limit) == LIMIT and answered.status_code == 200, answered.text
    assert answered.json()["success"] is True

    def chunked():  # the same body, counted as it arrives
        for start in range(0, LIMIT, 1000):
            yield at_limit[start:start + 1000]
    assert requests.post(f"{server.url}/api/ai/generate", data=chunked(), headers={
        **server.auth, "Content-Type": "application/json"}, timeout=30).status_code == 200
    over = requests.post(f"{server.url}/api/ai/generate", data=at_limit + b" ", headers={
        **server.auth, "Content-Type": "application/json"}, timeout=30)
    assert over.status_code == 413


def _chat_request(i: int) -> bytes:
    messages = [{"role": "user", "content": f"hi {i}"}]
    return json.dumps({"model": MODEL_ID, "stream": True, "messages": messages}).encode()


def _generate_request(i: int) -> bytes:
    meeting = {**BODY["data"]["meeting"], "title": f"parked {i} {time.monotonic()}"}
    return json.dumps({**BODY, "stream": True, "use_cache": False, "data": {"meeting": meeting}}).encode()


@pytest.mark.parametrize(("path", "request_body"), [("/v1/chat/completions", _chat_request),
                                                    ("/api/ai/generate", _generate_request)])
def test_streams_nobody_reads_are_closed_and_free_their_bulkhead_slots(served, path, request_body):
    server, provider = served
    chunk = {"id": "chatcmpl-parked", "object": "chat.completion.chunk", "created": 0, "model": MODEL_ID,
             "choices": [{"index": 0, "delta": {"content": "x" * 60000}, "finish_reason": None}]}
    frame = b"data: " + json.dumps(chunk).encode() + b"\n\n"
    # A body (ignored: chunks are sent) makes the fake send this reply as it is.
    stream = Reply(200, body=b"-", headers={"Content-Type": "text/event-stream"}, chunks=(frame,) * 1000,
                   body_delay=0.001)
    provider.reset()
    provider.fail_next(stream, stream)
    timeouts_before = _scraped(server, "resilience_send_timeouts_total")
    parked = []
    for i in range(2):  # bulkhead_max is 2: these two take every slot, and never read a byte
        sock = _connect(server.port, rcvbuf=4096)
        body = request_body(i)
        headers = {**server.auth, "Content-Type": "application/json", "Content-Length": str(len(body))}
        sock.sendall(_head("POST", path, headers) + body)
        parked.append(sock)
    try:
        deadline = time.monotonic() + 10
        while provider.chat_calls < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        plain = {"model": MODEL_ID, "messages": [{"role": "user", "content": "me too"}]}

        def other_caller() -> requests.Response:
            return requests.post(f"{server.url}/v1/chat/completions", json=plain, headers=server.auth,
                                 timeout=30)

        assert other_caller().status_code == 503  # parked: every slot is held
        answered = None
        while time.monotonic() < deadline + 10:
            answered = other_caller()
            if answered.status_code != 503:
                break
            time.sleep(0.05)
        assert answered is not None and answered.status_code == 200, server.output[-3000:]
        # Both parked responses are closed (the other caller may have got the first free slot).
        while (timeouts := _scraped(server, "resilience_send_timeouts_total")) < timeouts_before + 2 \
                and time.monotonic() < deadline + 20:
            time.sleep(0.05)
        assert timeouts == timeouts_before + 2
    finally:
        for sock in parked:
            sock.close()


# -- the ASGI handler's body reader, chunk by chunk ------------------------------------------------
def _receiver(chunks: list[bytes]):
    taken: list[bytes] = []

    async def receive():
        chunk = chunks[len(taken)]
        taken.append(chunk)
        return {"type": "http.request", "body": chunk, "more_body": len(taken) < len(chunks)}
    return receive, taken


def test_the_body_reader_stops_at_the_chunk_that_passes_the_limit(settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10
    handler = GatewayASGIHandler()
    receive, taken = _receiver([b"12345", b"6789", b"ab", b"never", b"read"])
    with pytest.raises(door.BodyTooLarge):
        asyncio.run(handler.read_body(receive))
    assert taken == [b"12345", b"6789", b"ab"]  # nothing asked for past the limit
    receive, _ = _receiver([b"12345", b"67890"])
    assert asyncio.run(handler.read_body(receive)).read() == b"1234567890"  # exactly the limit


# -- the development server (`make run`) ------------------------------------------------------------
@pytest.fixture
def runserver(tmp_path):
    port = free_port()
    env = {**os.environ, "DEBUG": "true", "MAX_REQUEST_BYTES": str(LIMIT),
           "DATABASE_URL": f"sqlite:///{tmp_path / 'dev.sqlite3'}"}
    env.pop("REDIS_URL", None)
    process = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"], cwd=ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert process.poll() is None, process.stderr.read()
            with contextlib.suppress(requests.ConnectionError):
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.communicate(timeout=30)


def test_runserver_refuses_a_huge_body_without_reading_it(runserver):
    with _connect(runserver) as sock:
        sock.sendall(_head("POST", "/v1/chat/completions", {"Content-Type": "application/json",
                                                            "Content-Length": str(GIB)}))
        status, headers, body = _response(sock)
        assert status == 413 and json.loads(body)["error"]["code"] == "request_too_large"
        assert headers["connection"] == "close" and len(headers["x-request-id"]) == 32
        assert _closed(sock)  # Django's own server would sit reading the 1 GiB it was promised
    with _connect(runserver) as sock:  # a body-free route with a body: answered, never drained
        sock.sendall(_head("GET", "/healthz", {"Content-Length": str(GIB)}))
        status, headers, _ = _response(sock)
        assert status == 200 and headers["connection"] == "close" and _closed(sock)
    at_limit = b" " * LIMIT
    assert requests.post(f"http://127.0.0.1:{runserver}/api/ai/generate", data=at_limit, timeout=10,
                         headers={"Content-Type": "application/json"}).status_code == 401  # past the door
    assert requests.post(f"http://127.0.0.1:{runserver}/api/ai/generate", data=at_limit + b" ", timeout=10,
                         headers={"Content-Type": "application/json"}).status_code == 413


# -- the send watchdog, in process -------------------------------------------------------------------
def _stream_response(chunks: int, kind: str = "django"):
    """A streamed response of `chunks` parts: Django's own, or an event stream (the AI doors'
    kind, which the handler sends with a loop of its own)."""
    from django.http import StreamingHttpResponse

    from aigen.edge.streaming import EventStreamResponse

    closed = []

    async def body():
        try:
            for i in range(chunks):
                yield b"chunk %d\n" % i
        finally:
            closed.append(True)
    response = EventStreamResponse(body()) if kind == "events" else StreamingHttpResponse(body())
    return response, closed


@pytest.mark.parametrize("kind", ["django", "events"])
def test_a_slow_but_steady_reader_is_not_cut_off(settings, kind):
    settings.RESILIENCE = {**settings.RESILIENCE, "SEND_TIMEOUT": 0.1}
    response, closed = _stream_response(6, kind)
    sent = []

    async def slow_send(message):  # each chunk waits under the timeout; the whole stream over it
        if message["type"] == "http.response.body":
            await asyncio.sleep(0.04)
        sent.append(message)

    asyncio.run(GatewayASGIHandler().send_response(response, slow_send))
    assert len([m for m in sent if m.get("body")]) == 6 and not sent[-1].get("more_body") and closed


@pytest.mark.parametrize("kind", ["django", "events"])
@pytest.mark.parametrize("stuck_on", [b"chunk 3\n", b""])  # a part, or the body's closing message
def test_a_send_that_never_completes_times_out_and_closes_the_body(settings, kind, stuck_on):
    from project.asgi_handler import SendTimedOut

    settings.RESILIENCE = {**settings.RESILIENCE, "SEND_TIMEOUT": 0.05}
    response, closed = _stream_response(1000 if stuck_on else 5, kind)

    async def stuck_send(message):
        if message["type"] == "http.response.body" and message.get("body", b"") == stuck_on:
            await asyncio.sleep(10)  # the client's window stays shut (far past the timeout)

    with pytest.raises(SendTimedOut):
        asyncio.run(GatewayASGIHandler().send_response(response, stuck_send))
    assert closed  # the body's generator was closed on the way out


def test_an_event_stream_is_sent_part_by_part_as_given(settings):
    """Each part is one body message, however large (no split), an empty part none, and the
    response's cookies go with its headers."""
    from aigen.edge.streaming import EventStreamResponse

    settings.RESILIENCE = {**settings.RESILIENCE, "SEND_TIMEOUT": 30}
    large = b"x" * 200_000

    async def parts():
        yield b"one"
        yield b""
        yield large

    response = EventStreamResponse(parts())
    response.set_cookie("seen", "1")
    sent = []

    async def record(message):
        sent.append(message)

    asyncio.run(GatewayASGIHandler().send_response(response, record))
    assert (b"Content-Type", b"text/event-stream; charset=utf-8") in sent[0]["headers"]
    assert any(name == b"Set-Cookie" and value.startswith(b"seen=1") for name, value in sent[0]["headers"])
    assert [(m.get("body", b""), m.get("more_body", False)) for m in sent[1:]] == [
        (b"one", True), (large, True), (b"", False)]


@pytest.mark.parametrize("send_timeout", [0, 30])
def test_the_parts_yielded_after_end_follows_go_with_the_end_of_the_body(settings, send_timeout):
    from aigen.edge.streaming import EventStreamResponse

    settings.RESILIENCE = {**settings.RESILIENCE, "SEND_TIMEOUT": send_timeout}

    async def parts():
        yield b"one"
        yield b"two"
        response.end_follows()
        yield b"three"
        yield b"four"

    response = EventStreamResponse(parts())
    sent = []

    async def record(message):
        sent.append(message)

    asyncio.run(GatewayASGIHandler().send_response(response, record))
    assert sent[0]["type"] == "http.response.start"
    assert (b"Cache-Control", b"no-cache, no-transform") in sent[0]["headers"]
    assert [(m.get("body", b""), m.get("more_body", False)) for m in sent[1:]] == [
        (b"one", True), (b"two", True), (b"threefour", False)]

