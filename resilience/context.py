"""Per-request context that upstream calls pick up: the request id, and the
streamed upstream responses the request holds open."""
from __future__ import annotations

from contextvars import ContextVar
from typing import Any

current_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

#: The streamed async upstream responses still open for this request (a set,
#: installed per request by the ASGI handler, project.asgi_handler). Whatever
#: the request leaves open (a stream whose consumer was dropped: the client
#: read nothing for SEND_TIMEOUT, or went away) is closed when the request
#: ends, freeing its connection and bulkhead slot at once rather than whenever
#: the garbage collector reaches the abandoned generators.
open_streams: ContextVar[set[Any] | None] = ContextVar("open_streams", default=None)
