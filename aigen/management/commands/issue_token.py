"""Issue (or show) the API token of a user: `manage.py issue_token alice [--reset]`."""
from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from rest_framework.authtoken.models import Token


class Command(BaseCommand):
    help = ("Print USERNAME's API token (sent as 'Authorization: Bearer <token>'), creating it if "
            "needed; --reset replaces an existing one.")

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
        with transaction.atomic():
            if reset:
                Token.objects.filter(user=user).delete()
            token, created = Token.objects.get_or_create(user=user)
        verb = "Issued" if created else "Existing"
        self.stderr.write(f"{verb} token for {username}:")
        self.stdout.write(token.key)
