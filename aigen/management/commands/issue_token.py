"""Issue a user's API token: `manage.py issue_token alice [--reset]`.

The token is printed once, here: only its digest is stored, so it cannot be
shown again. A user has one token; `--reset` revokes it and issues a new one.
"""
from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from aigen.edge.tokens import token_issue
from aigen.exceptions import TokenExists


class Command(BaseCommand):
    help = ("Issue USERNAME an API token (sent as 'Authorization: Bearer <token>') and print it: the "
            "only time it is shown. With a token already issued, --reset revokes it and issues a new one.")

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("username")
        parser.add_argument("--reset", action="store_true",
                            help="Revoke the current token and issue a new one.")

    def handle(self, *args: Any, username: str, reset: bool, **options: Any) -> None:
        User = get_user_model()
        try:
            user = User.objects.get(**{User.USERNAME_FIELD: username})
        except User.DoesNotExist:
            raise CommandError(f"No user {username!r}. Create one with `manage.py createsuperuser` "
                               "or in the admin first.")
        if not user.is_active:
            raise CommandError(f"User {username!r} is inactive.")
        try:
            token = token_issue(user=user, replace=reset)
        except TokenExists as err:
            raise CommandError(f"{err.message} It is stored as a digest and cannot be shown again: "
                               "--reset revokes it and issues a new one.") from None
        self.stderr.write(f"Issued token for {username} (shown once; store it now):")
        self.stdout.write(token)
