"""`manage.py credentials_rotate`: re-encrypt every stored account token
under the first of CREDENTIALS_KEYS (resilience.config.accounts). Rotate a
key by putting the new one first, running this, then dropping the old one."""
from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from resilience.client.sealing import SealBroken, SealingUnavailable
from resilience.config.accounts import credentials_rotate


class Command(BaseCommand):
    help = "Re-encrypt every stored account token under the first CREDENTIALS_KEYS key."

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            count = credentials_rotate()
        except (SealBroken, SealingUnavailable) as err:
            raise CommandError(f"nothing re-encrypted: {err.message}") from None
        self.stdout.write(self.style.SUCCESS(f"{count} account(s) re-encrypted under the first key"))
