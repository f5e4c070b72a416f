"""Django's own middleware, run on the event loop under ASGI.

In async mode Django's `MiddlewareMixin` runs every `process_request`,
`process_view` and `process_response` through `sync_to_async`: a thread hop
each, about ten per request with the default stack, although most of these
hooks only read headers and set attributes. These subclasses call such hooks
inline and keep the thread for the hooks that may do I/O:

- the session is saved (SessionMiddleware) only when the request touched it;
- messages are stored (MessageMiddleware) only when the request used them.

Under WSGI they behave exactly as Django's classes (nothing changes).
Listed in settings.MIDDLEWARE in place of Django's.
"""
from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.contrib.auth.middleware import AuthenticationMiddleware
from django.contrib.messages.middleware import MessageMiddleware
from django.contrib.sessions.middleware import SessionMiddleware
from django.http import HttpRequest, HttpResponseBase
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.common import CommonMiddleware
from django.middleware.csrf import CsrfViewMiddleware
from django.middleware.security import SecurityMiddleware


class InlineHooks:
    """For a `MiddlewareMixin` subclass whose hooks do no I/O (or say when
    they might, through `response_needs_thread`)."""

    def __init__(self, get_response: Any) -> None:
        super().__init__(get_response)  # type: ignore[call-arg]
        if self.async_mode and hasattr(self, "process_view"):  # type: ignore[attr-defined]
            sync_view_hook = self.process_view  # type: ignore[has-type]

            async def process_view(*args: Any) -> Any:
                return sync_view_hook(*args)

            # Django adapts hooks by their kind: an async hook is awaited inline.
            self.process_view = process_view

    def response_needs_thread(self, request: HttpRequest) -> bool:
        return False

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        response = None
        if hasattr(self, "process_request"):
            response = self.process_request(request)
        response = response or await self.get_response(request)  # type: ignore[attr-defined]
        if hasattr(self, "process_response"):
            if self.response_needs_thread(request):
                response = await sync_to_async(self.process_response)(request, response)
            else:
                response = self.process_response(request, response)
        return response


class InlineSecurityMiddleware(InlineHooks, SecurityMiddleware):
    pass


class InlineSessionMiddleware(InlineHooks, SessionMiddleware):
    def response_needs_thread(self, request: HttpRequest) -> bool:
        session = getattr(request, "session", None)
        return session is not None and (session.accessed or session.modified)


class InlineCommonMiddleware(InlineHooks, CommonMiddleware):
    pass


class InlineCsrfViewMiddleware(InlineHooks, CsrfViewMiddleware):
    def response_needs_thread(self, request: HttpRequest) -> bool:
        # Rotating the token reads the session when CSRF_USE_SESSIONS is on.
        return bool(getattr(request, "META", {}).get("CSRF_COOKIE_NEEDS_UPDATE"))


class InlineAuthenticationMiddleware(InlineHooks, AuthenticationMiddleware):
    pass  # request.user stays lazy: nothing is read until a view asks


class InlineMessageMiddleware(InlineHooks, MessageMiddleware):
    def response_needs_thread(self, request: HttpRequest) -> bool:
        storage = getattr(request, "_messages", None)
        return storage is not None and (storage.used or storage.added_new)


class InlineXFrameOptionsMiddleware(InlineHooks, XFrameOptionsMiddleware):
    pass
