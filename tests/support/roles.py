"""Users in the roles the permission tests walk through, and their API tokens.

    user = role_user("viewer")           # None for "anonymous"
    client = api_client("operator")      # an APIClient with its Bearer token
    user_token(user)                     # the user's token (issued once, reused)

Roles, as the admin sees them:
- anonymous: no credentials;
- user: an active account, not staff (an API caller);
- staff: staff without any permission;
- viewer: staff with the view permissions of the operations models;
- operator: staff with their view and change permissions.
"""
from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from rest_framework.test import APIClient

from aigen.edge.tokens import token_digest, token_issue
from aigen.models import ApiToken

ROLES = ("anonymous", "user", "staff", "viewer", "operator")
#: The models whose permissions the operations API asks (resilience.ops.permissions).
MODELS = ("upstream", "calllog", "suggestion", "job", "deadletter")

_tokens: dict[int, str] = {}


def user_token(user: Any) -> str:
    """`user`'s API token: the one issued here before, if it is still the
    stored one, else a fresh one (replacing whatever was stored)."""
    known = _tokens.get(user.pk)
    if known and ApiToken.objects.filter(user=user, digest=token_digest(known)).exists():
        return known
    _tokens[user.pk] = token = token_issue(user=user, replace=True)
    return token


def grant(user: Any, *codenames: str) -> Any:
    """Give `user` the permissions named `codename` of the resilience app; the user, re-read
    (Django caches permissions on the instance)."""
    user.user_permissions.add(*Permission.objects.filter(content_type__app_label="resilience",
                                                         codename__in=codenames))
    return get_user_model().objects.get(pk=user.pk)


def role_user(role: str, *, username: str | None = None) -> Any:
    if role == "anonymous":
        return None
    assert role in ROLES, role
    user = get_user_model().objects.create_user(username or f"{role}-user", is_staff=role != "user")
    if role == "viewer":
        return grant(user, *(f"view_{model}" for model in MODELS))
    if role == "operator":
        return grant(user, *(f"{verb}_{model}" for model in MODELS for verb in ("view", "change")))
    return user


def api_client(role_or_user: Any) -> APIClient:
    user = role_user(role_or_user) if isinstance(role_or_user, str) else role_or_user
    client = APIClient()
    if user is not None:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {user_token(user)}")
    return client
