"""`manage.py endpoints_export UPSTREAM [-o FILE]`: the upstream's endpoints
in the import's shape, without a secret (resilience.config.accounts)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from resilience.config.accounts import endpoints_export
from resilience.exceptions import NotFound


class Command(BaseCommand):
    help = "Write an upstream's endpoints/accounts as JSON (no secrets), the shape endpoints_import reads."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("upstream")
        parser.add_argument("--output", "-o", help="write to FILE instead of standard output")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            text = endpoints_export(upstream=options["upstream"])
        except NotFound as err:
            raise CommandError(err.message) from None
        if options["output"]:
            Path(options["output"]).write_text(text, encoding="utf-8")
            self.stdout.write(self.style.SUCCESS(f"written to {options['output']}"))
        else:
            self.stdout.write(text, ending="")
