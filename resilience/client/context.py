"""Per-request context that upstream calls pick up: the request id, and the
caller (the id of the user a call is made for, when one is known: the API
authentication binds it, a generation job binds its owner), the caller's
admission priority (quotas), and the streamed
upstream responses the request holds open. A call-log row keeps the request
id and the caller, so a caller without view permission on call logs is shown
its own calls only (resilience.ops.views)."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

current_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
current_caller: ContextVar[int | None] = ContextVar("caller", default=None)


@contextmanager
def caller_bound(user_id: int | None) -> Iterator[None]:
    """Calls made inside are made for user `user_id`."""
    token = current_caller.set(user_id)
    try:
        yield
    finally:
        current_caller.reset(token)


#: Admission priorities, highest first (issue 29): `high` for interactive
#: callers (staff, or API tokens marked so), `normal` by default, `low` for
#: jobs, warmup and benchmarks. Capacity that frees goes to the highest first.
PRIORITIES = ("high", "normal", "low")
current_priority: ContextVar[str] = ContextVar("priority", default="normal")


@contextmanager
def priority_bound(priority: str) -> Iterator[None]:
    """Calls made inside wait for capacity at `priority` (one of PRIORITIES)."""
    if priority not in PRIORITIES:
        raise ValueError(f"priority must be one of {', '.join(PRIORITIES)}, not {priority!r}")
    token = current_priority.set(priority)
    try:
        yield
    finally:
        current_priority.reset(token)

#: The streamed async upstream responses still open for this request (a set,
#: installed per request by the ASGI handler, project.asgi_handler). Whatever
#: the request leaves open (a stream whose consumer was dropped: the client
#: read nothing for SEND_TIMEOUT, or went away) is closed when the request
#: ends, freeing its connection and bulkhead slot at once rather than whenever
#: the garbage collector reaches the abandoned generators.
open_streams: ContextVar[set[Any] | None] = ContextVar("open_streams", default=None)
