"""Database-connection housekeeping for ASGI without a thread per request.

Django connects `close_old_connections` (and `reset_queries`) to
request_started and request_finished. Under ASGI each request runs its sync
work in a thread-sensitive context of its own, with a fresh thread (and one
more to join it at the end); a request served by an async view that never
does sync work needs neither.

At request start there is no old connection to close. At request end only a
request that did sync work (its context got an executor) can hold
connections, in that executor's thread: `close_old_connections` is queued
there, where it runs before the context joins the thread. Every
request_finished receiver is then sync and cheap, so the ASGI handler
(`project/asgi_handler.py`) closes the response on the event loop instead of
hopping to a thread for it. WSGI (runserver, tests) keeps Django's receivers:
`install()` is called from project/asgi.py only.
"""
from __future__ import annotations

from typing import Any

from asgiref.sync import SyncToAsync
from django.conf import settings
from django.core import signals
from django.db import close_old_connections, reset_queries


def _close_if_used(**kwargs: Any) -> None:
    context = SyncToAsync.thread_sensitive_context.get(None)
    executor = SyncToAsync.context_to_thread_executor.get(context) if context is not None else None
    if executor is not None:
        executor.submit(close_old_connections)


def install() -> None:
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    if not settings.DEBUG:  # the query log only exists with DEBUG
        signals.request_started.disconnect(reset_queries)
    signals.request_finished.connect(_close_if_used, dispatch_uid="project.asgi_signals.close_if_used")
