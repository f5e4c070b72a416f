"""Database-connection housekeeping for ASGI without a thread per request.

Django connects `close_old_connections` (and `reset_queries`) to
request_started and request_finished. Under ASGI those are sync receivers of
an async signal, so every request starts a thread of its own just to run
them, even one that never touches the database (measured: a sizeable share
of the CPU of a generation served from an async view).

Under ASGI each request runs its sync work in a thread-sensitive context of
its own, with a fresh thread: at request start there is no old connection to
close, and at request end only a request that did sync work (its context got
an executor) can hold connections, in that thread. So: nothing at start, and
`close_old_connections` at the end only there, in that same thread. WSGI
(runserver, tests) keeps Django's receivers: `install()` is called from
project/asgi.py only.
"""
from __future__ import annotations

from typing import Any

from asgiref.sync import SyncToAsync, sync_to_async
from django.conf import settings
from django.core import signals
from django.db import close_old_connections, reset_queries


async def _close_if_used(**kwargs: Any) -> None:
    context = SyncToAsync.thread_sensitive_context.get(None)
    if context is not None and context in SyncToAsync.context_to_thread_executor:
        await sync_to_async(close_old_connections)()


def install() -> None:
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    if not settings.DEBUG:  # the query log only exists with DEBUG
        signals.request_started.disconnect(reset_queries)
    signals.request_finished.connect(_close_if_used, dispatch_uid="project.asgi_signals.close_if_used")
