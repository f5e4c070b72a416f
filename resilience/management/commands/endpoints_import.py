"""`manage.py endpoints_import FILE|-`: create or update an upstream's
accounts from a JSON file (resilience.config.accounts); prints a summary,
never a token. A bad file is refused whole, naming the entry and the field."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from resilience.client.sealing import SealingUnavailable
from resilience.config.accounts import endpoints_import
from resilience.exceptions import ConfigInvalid


class Command(BaseCommand):
    help = "Create or update an upstream's endpoints/accounts from a JSON file (- for stdin)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("file", help='JSON file, or "-" for standard input')

    def handle(self, *args: Any, **options: Any) -> None:
        path = options["file"]
        try:
            text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
        except OSError as err:
            raise CommandError(f"cannot read {path}: {err.strerror}") from None
        try:
            done = endpoints_import(text=text)
        except (ConfigInvalid, SealingUnavailable) as err:
            raise CommandError(f"nothing imported: {err.message}") from None
        self.stdout.write(self.style.SUCCESS(
            f"created {len(done.created)}, updated {len(done.updated)}, "
            f"refresh tokens set {done.tokens_set}"))
        for label, names in (("created", done.created), ("updated", done.updated)):
            if names:
                self.stdout.write(f"  {label}: {', '.join(names)}")
