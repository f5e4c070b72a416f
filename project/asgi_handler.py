"""Django's ASGI handler, closing each response on the event loop.

Django 5.2's `ASGIHandler.handle` ends every request with
`await sync_to_async(response.close)()`: a hop to the request's own
thread-sensitive executor, which means starting a thread (and another one to
join it) for every request, even one answered by an async view that did no
sync work at all. Profiled under streamed generations that hop was about a
tenth of a worker's CPU.

`response.close()` runs resource closers (file handles) and sends
request_finished; under this server every request_finished receiver is sync
and does not block (`project/asgi_signals.py`: close_caches, reset_urlconf
and the connection housekeeping queued to the request's thread), so the close
runs inline. An async receiver connected later would make Django's sync
`Signal.send` call async_to_sync on the loop, which asgiref refuses: such a
receiver, when present, sends this handler back to Django's thread hop.

The door (project.door) is here too: `handle` refuses a body over the limit
before reading it (declared) or the moment it passes it (chunked), and gives
the body-free routes an empty body without receiving any. `send_response`
bounds each body send by `SEND_TIMEOUT`: a client that reads nothing for that
long has its response closed, counted in `resilience_send_timeouts_total`,
and every upstream stream the request left open is closed when `handle` ends
(resilience.client.context.open_streams: its connection and bulkhead slot are free at
once, not whenever the garbage collector reaches the abandoned generators).
The response is left unfinished on purpose: uvicorn then drops the connection
(and logs "ASGI callable returned without completing response" once).
An event stream (aigen.edge.streaming.EventStreamResponse, what the AI doors
answer streams with) is sent by a loop of its own: each part is one body
message as it comes (Django's loop copies and splits every part through
`chunk_bytes`, and the send timeout wrapped every send in a function of its
own), and the parts yielded after its producer said its end follows
(`end_follows()`) go with the body's closing message: the server writes them
once.

Token calls at the AI doors (`DOOR_MIDDLEWARE`): a request to `/v1/` or
`/api/ai/generate` that names an API token (`Authorization: Bearer`/`Token`,
or `x-api-key`) and carries no session cookie runs through a second middleware
chain, settings.MIDDLEWARE without what only a browser session uses (sessions,
CSRF, authentication from the session, messages, static files, the admin's
history and login lockouts).
Such a call never reads any of it: its view authenticates the token itself and
a view that finds no session layer answers 401 as it does to a caller without
one. Measured in process: 0.15 ms of the 0.19 ms the whole stack costs a call.

The rest of `handle` is Django's own (5.2).
"""
from __future__ import annotations

import asyncio
import io
import logging
import tempfile
from contextlib import aclosing

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.base import BaseHandler
from django.urls import set_script_prefix

from aigen.edge.auth import TOKEN_KEYWORDS
from aigen.edge.streaming import EventStreamResponse
from project import door
from resilience.client.context import current_request_id, open_streams
from resilience.conf import resilience_settings
from resilience.ops.middleware import BOUND_WHILE_SENT
from resilience.telemetry import metrics

logger = logging.getLogger(__name__)


class SendTimedOut(Exception):
    """The client read nothing for SEND_TIMEOUT seconds while a body chunk waited."""


def _path_info(scope) -> str:
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


def _header(scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value
    return None


def _declares_body(scope) -> bool:
    length = door.declared_length(_header(scope, b"content-length"))
    return bool(length) or _header(scope, b"transfer-encoding") is not None


def _closing(send):
    """`send` that marks the response `Connection: close` (a body was left unread)."""
    async def closing_send(message):
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), (b"connection", b"close")]}
        await send(message)
    return closing_send


async def send_too_large(send, scope) -> None:
    body = door.too_large_body(_path_info(scope))
    metrics.body_refused_count()
    given = _header(scope, b"x-request-id")
    headers = [(k.lower().encode(), v.encode())
               for k, v in door.too_large_headers(body, given.decode("latin-1") if given else None)]
    await send({"type": "http.response.start", "status": 413,
                "headers": [*headers, (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def _asgi_headers(response) -> list[tuple[bytes, bytes]]:
    """The response's headers and cookies as ASGI wants them (as Django's `send_response`)."""
    headers = [(header.encode("ascii") if isinstance(header, str) else bytes(header),
                value.encode("latin1") if isinstance(value, str) else bytes(value))
               for header, value in response.items()]
    headers.extend((b"Set-Cookie", cookie.output(header="").encode("ascii").strip())
                   for cookie in response.cookies.values())
    return headers


async def _send_event_stream(response: EventStreamResponse, send, watch: _SendWatch | None) -> None:
    """An event stream's send loop: one body message per part as it comes, no copy or split of
    the part (Django's loop passes each through `chunk_bytes`). The parts its producer yields
    once it said the end follows (`end_follows()`) are held and sent with the body's closing
    message: one write, not two. While a message waits on the client, `watch` knows since when."""
    await send({"type": "http.response.start", "status": response.status_code,
                "headers": _asgi_headers(response)})
    held: list[bytes] = []
    async with aclosing(aiter(response)) as parts:
        async for part in parts:
            if response.ending:
                held.append(part)
            elif part:
                if watch is not None:
                    watch.sending_since = watch.loop.time()
                await send({"type": "http.response.body", "body": part, "more_body": True})
                if watch is not None:
                    watch.sending_since = None
    if watch is not None:
        watch.sending_since = watch.loop.time()
    await send({"type": "http.response.body", "body": b"".join(held)})


class _SendWatch:
    """Bounds how long one response's body sends may wait on a client that
    reads nothing (uvicorn's `send` waits on flow control while the socket's
    buffers are full). One timer per response, re-armed at most once per
    timeout, instead of a timer around every chunk: a chunk costs two
    attribute writes (a timer per send was 13 us per chunk under uvloop).
    When a send has waited `timeout` seconds the sending task is cancelled;
    `send_response` turns that into SendTimedOut."""

    def __init__(self, timeout: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.timeout = timeout
        self.task = asyncio.current_task()
        self.sending_since: float | None = None
        self.fired = False
        self._timer = self.loop.call_later(timeout, self._check)

    def _check(self) -> None:
        since = self.sending_since
        now = self.loop.time()
        if since is not None and now - since >= self.timeout:
            self.fired = True
            self.task.cancel()
            return
        self._timer = self.loop.call_at((since if since is not None else now) + self.timeout, self._check)

    def stop(self) -> None:
        self._timer.cancel()


def _finished_receivers_are_sync() -> bool:
    # Signal.receivers holds (lookup key, receiver or weak reference, is_async) in Django 5.2.
    return not any(entry[2] for entry in signals.request_finished.receivers)


_TOKEN_SCHEMES = tuple(f"{keyword} " for keyword in TOKEN_KEYWORDS)
#: The async AI views, which authenticate a token themselves (aigen.edge.auth.request_authenticate).
_DOORS = ("/v1/", "/api/ai/generate")


def _door_token_call(request) -> bool:
    """A call at an AI door naming an API token, with no session cookie (`DOOR_MIDDLEWARE`)."""
    if not request.path_info.startswith(_DOORS) or settings.SESSION_COOKIE_NAME in request.COOKIES:
        return False
    meta = request.META
    return meta.get("HTTP_AUTHORIZATION", "").startswith(_TOKEN_SCHEMES) or bool(meta.get("HTTP_X_API_KEY"))


class DoorHandler(BaseHandler):
    """The middleware chain of token calls at the AI doors: `settings.DOOR_MIDDLEWARE`."""

    def load_door(self) -> None:
        full = settings.MIDDLEWARE
        settings.MIDDLEWARE = settings.DOOR_MIDDLEWARE  # load_middleware reads only the setting
        try:
            self.load_middleware(is_async=True)
        finally:
            settings.MIDDLEWARE = full


class GatewayASGIHandler(ASGIHandler):
    def __init__(self) -> None:
        super().__init__()
        self.door = DoorHandler()
        self.door.load_door()

    async def run_get_response(self, request):
        if not _door_token_call(request):
            return await super().run_get_response(request)
        response = await self.door.get_response_async(request)
        response._handler_class = self.__class__  # as Django's run_get_response
        return response

    async def close_response(self, response) -> None:
        if _finished_receivers_are_sync():
            response.close()
        else:
            await sync_to_async(response.close)()

    async def read_body(self, receive):
        """Django's, counting: past the limit, BodyTooLarge before the chunk is written."""
        limit = door.body_limit()
        # Returned open (the request reads it); closed by `handle`, as Django's is.
        body_file = tempfile.SpooledTemporaryFile(  # noqa: SIM115
            max_size=settings.FILE_UPLOAD_MAX_MEMORY_SIZE, mode="w+b")
        received = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                body_file.close()
                raise RequestAborted()
            if chunk := message.get("body"):
                received += len(chunk)
                if limit is not None and received > limit:
                    body_file.close()
                    raise door.BodyTooLarge()
                body_file.write(chunk)
            if not message.get("more_body", False):
                break
        body_file.seek(0)
        return body_file

    async def send_response(self, response, send):
        timeout = float(resilience_settings.SEND_TIMEOUT or 0)
        watch = _SendWatch(timeout) if timeout > 0 else None
        try:
            if isinstance(response, EventStreamResponse):
                return await _send_event_stream(response, send, watch)
            if watch is None:
                return await super().send_response(response, send)

            async def watched_send(message):
                if message["type"] != "http.response.body":
                    return await send(message)
                watch.sending_since = watch.loop.time()
                try:
                    return await send(message)
                finally:
                    watch.sending_since = None

            return await super().send_response(response, watched_send)
        except asyncio.CancelledError:
            if watch is None or not watch.fired:
                raise  # cancelled for another reason (the client went away)
            asyncio.current_task().uncancel()
            raise SendTimedOut() from None
        finally:
            if watch is not None:
                watch.stop()

    async def handle(self, scope, receive, send):  # Django 5.2's, with the door and the two closes
        path = _path_info(scope)
        opened = await self._open_body(scope, receive, send)
        if opened is None:
            return
        body_file, listen, send = opened
        set_script_prefix(get_script_prefix(scope))
        await signals.request_started.asend(sender=self.__class__, scope=scope)
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            body_file.close()
            await self.send_response(error_response, send)
            await self.close_response(error_response)
            return

        held: set = set()
        holding = open_streams.set(held)  # the tasks below share this set (context copies)
        tasks = await self._serve(request, receive, send, listen=listen, body_file=body_file, path=path)
        open_streams.reset(holding)
        for stream in list(held):  # left open by a dropped consumer (send timeout, disconnect)
            await stream.aclose()

        respond = tasks[-1]
        if respond.cancelled():
            await signals.request_finished.asend(sender=self.__class__)
        else:
            await self.close_response(respond.result())

        body_file.close()

    async def _open_body(self, scope, receive, send):
        """The door: (body file, whether to listen for a disconnect, the send to answer with), or None
        when the request was answered already (body too large) or the client went away."""
        if door.reads_no_body(_path_info(scope)):
            # Nothing is received, not even the (empty) request message, so no
            # disconnect listener either: these answers are immediate. A body
            # stays unread on the wire and the connection is closed after the
            # answer instead of reading it.
            return io.BytesIO(), False, _closing(send) if _declares_body(scope) else send
        if door.declared_too_large(_header(scope, b"content-length")):
            await send_too_large(send, scope)
            return None
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return None
        except door.BodyTooLarge:
            await send_too_large(send, scope)
            return None
        return body_file, True, send

    async def _serve(self, request, receive, send, *, listen, body_file, path):
        """Run the view and, when `listen`, the disconnect listener side by side; the first to finish
        cancels the other (which may handle its cancellation). Returns the tasks, the view's last.

        What the tasks ended with is read, not re-raised here (Django's `handle` calls `result()`
        and `await`s the cancelled task): an exception raised in this frame holds the frame in its
        traceback while the task holds the exception, a reference cycle that kept every request's
        objects (the request, its response, the view's frames: about 60) until the garbage
        collector's next run. Every answered request made one, from the disconnect message
        uvicorn hands the listener once the answer is sent; each collection then walked them all
        (measured: 64 objects a request left for the collector, 0 now). Only an error that
        propagates is raised, as before."""
        tasks = [asyncio.create_task(self._respond(request, send, path))]
        if listen:
            tasks.insert(0, asyncio.create_task(self.listen_for_disconnect(receive)))
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if not task.done():
                task.cancel()
                await asyncio.wait([task])
            if task.cancelled():
                continue
            error = task.exception()
            if error is None or isinstance(error, RequestAborted):
                continue
            if isinstance(error, AssertionError):  # an ASGI message after the body (Django's check)
                body_file.close()
            raise error
        return tasks

    async def _respond(self, request, send, path):
        """Django's `process_request`: the view's response, sent with the request's id bound (this
        task's own context: RequestIdMiddleware wraps no streaming body for it); a send that timed
        out is counted."""
        setattr(request, BOUND_WHILE_SENT, True)
        response = await self.run_get_response(request)
        current_request_id.set(getattr(request, "request_id", None))
        try:
            await self.send_response(response, send)
        except asyncio.CancelledError:
            pass  # client disconnected during send_response
        except SendTimedOut:
            # The response's iterator was closed on the way out (aclosing in
            # send_response): the stream's upstream connection and slot are free.
            # Returning without finishing the body makes the server drop the connection.
            metrics.send_timeout_count()
            logger.warning("closed a response the client read nothing of for %s s: %s %.200r",
                           resilience_settings.SEND_TIMEOUT, request.method, path)
        return response
