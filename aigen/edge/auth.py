"""DRF authentication with the project's API tokens (aigen.edge.tokens):
`Authorization: Bearer <token>` and DRF's `Authorization: Token <token>`.

A valid token is never refused by the failure throttle: only failed checks
are counted per client address (resilience.ops.throttling), and past the rate a
failed check answers 429 with `Retry-After` instead of 401. So one client
guessing from an address shared with others (a NAT, an office) slows itself
down without locking out the valid tokens behind the same address.

`caller_bind` binds the caller and its admission priority
(resilience.client.context) for the request's upstream calls: the API token's
priority, with a staff user's `normal` raised to `high`.

`request_authenticate` is the same contract for the async views (generate,
/v1): it returns the user or raises an `aigen.edge.errors.Refusal` that each
view renders in its own shape.
"""
from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse
from rest_framework import exceptions
from rest_framework.authentication import CSRFCheck, TokenAuthentication, get_authorization_header

from aigen.edge.errors import Refusal
from aigen.edge.tokens import atoken_user, token_of, token_user
from resilience.client.context import current_caller, current_priority
from resilience.ops.throttling import AuthFailureThrottle


def caller_priority(user: Any) -> str:
    """The admission priority of `user`'s calls: its API token's, where a
    staff user's `normal` (the default) counts as `high`; `low` stays low."""
    token = token_of(user)
    priority = token.priority if token is not None else "normal"
    return "high" if priority == "normal" and getattr(user, "is_staff", False) else priority


def caller_bind(user: Any) -> None:
    """Upstream calls of this request are `user`'s (call logs, quotas) at its priority."""
    current_caller.set(user.pk)
    current_priority.set(caller_priority(user))


def token_refused(request: Any, message: str) -> exceptions.APIException:
    """What a failed token check raises: counted against the client's
    address, 429 once it used up its failures, else 401 with `message`."""
    throttle = AuthFailureThrottle()
    try:
        throttle.check(request)
    except exceptions.Throttled as throttled:
        return throttled
    throttle.record_failure(request)
    return exceptions.AuthenticationFailed(message)


class ThrottledTokenAuthentication(TokenAuthentication):
    """`Authorization: Token <token>`, checked against the stored digests
    (a subclass of DRF's for the schema generator; nothing of its lookup is used)."""

    def authenticate(self, request: Any) -> Any:
        words = get_authorization_header(request).split()
        if not words or words[0].lower() != self.keyword.lower().encode():
            return None  # not a token request: nothing to check or throttle
        if len(words) != 2:
            raise token_refused(request, "Invalid token header.")
        try:
            key = words[1].decode("ascii")
        except UnicodeError:
            raise token_refused(request, "Invalid token header.") from None
        user = token_user(key)
        if user is None:
            raise token_refused(request, "Invalid token.")
        caller_bind(user)  # upstream calls of this request are its (call logs, priority)
        return user, None

    def authenticate_credentials(self, key: str) -> Any:  # DRF's table is not read
        raise exceptions.AuthenticationFailed("Invalid token.")


class BearerTokenAuthentication(ThrottledTokenAuthentication):
    """The same, for `Authorization: Bearer <token>`."""

    keyword = "Bearer"


#: The `Authorization` schemes that carry an API token (project/asgi_handler.py routes on them too).
TOKEN_KEYWORDS = ("Bearer", "Token")


def _unauthenticated(message: str) -> Refusal:
    return Refusal("not_authenticated" if "not provided" in message else "authentication_failed", message,
                   401, www_authenticate=True)


async def request_authenticate(request: HttpRequest) -> Any:
    """The caller of an async view (also set as the call logs' caller), or a
    `Refusal`: 401, 429 past the failure throttle, 403 for a session POST
    without its CSRF token (as DRF requires)."""
    # From META: `request.headers` would parse every header of the request to read this one.
    header = request.META.get("HTTP_AUTHORIZATION", "")
    if header:
        keyword, _, key = header.partition(" ")
        if keyword in TOKEN_KEYWORDS:
            user = await atoken_user(key.strip())
            if user is not None:
                caller_bind(user)  # upstream calls of this request are its (call logs, priority)
                return user
            # Only a failed check is counted, per client address (as in the DRF views).
            refusal = await sync_to_async(token_refused)(request, "Invalid token.")
            if isinstance(refusal, exceptions.Throttled):
                raise Refusal("throttled", str(refusal.detail), 429, retry_after=refusal.wait)
            raise _unauthenticated(str(refusal.detail))
    # No session layer (a token call's middleware, project/asgi_handler.py): no session caller.
    auser = getattr(request, "auser", None)
    user = await auser() if auser is not None else None
    if user is None or not user.is_authenticated:
        raise _unauthenticated("Authentication credentials were not provided.")
    caller_bind(user)
    check = CSRFCheck(lambda req: HttpResponse())
    check.process_request(request)
    reason = check.process_view(request, None, (), {})
    if reason:
        raise Refusal("permission_denied", f"CSRF Failed: {reason}", 403)
    return user
