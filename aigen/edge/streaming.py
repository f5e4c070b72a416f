"""`EventStreamResponse`: the server-sent event streams the AI doors answer with.

Events go out as they come: `Cache-Control: no-cache, no-transform` (proxies
and the compression middleware pass them through untouched) and
`X-Accel-Buffering: no` (nginx does not hold them back).

Its producer says when the rest of the body is its end (`end_follows()`,
before yielding its last part): the server (project.asgi_handler) then sends
that part together with the end of the body, one socket write where there
were two. Nothing is held back for it before that point.

Its parts are bytes already (its producers and the middleware wrapping them
yield bytes), so they are handed on as they are: Django's
StreamingHttpResponse passes every part through a generator that copies it
into new bytes each time `streaming_content` is read and set, and once more
in `__aiter__`, three generator steps per part in the middleware chain the
doors run.
"""
from __future__ import annotations

from collections.abc import AsyncIterator

from django.http import StreamingHttpResponse


class EventStreamResponse(StreamingHttpResponse):
    #: Set by `end_follows()`: the parts from now on are the body's last.
    ending = False

    def __init__(self, parts: AsyncIterator[bytes]) -> None:
        super().__init__(parts, content_type="text/event-stream; charset=utf-8")
        self["Cache-Control"] = "no-cache, no-transform"
        self["X-Accel-Buffering"] = "no"

    @property
    def streaming_content(self) -> AsyncIterator[bytes]:
        return self._iterator

    @streaming_content.setter
    def streaming_content(self, value: AsyncIterator[bytes]) -> None:
        self._set_streaming_content(value)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterator

    def end_follows(self) -> None:
        """The parts yielded from now on end the body."""
        self.ending = True
