"""`manage.py config_export [--output FILE]`: every upstream, endpoint and
alert rule as one YAML file (credentials only by their variable's name)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand

from resilience.config.files import config_export


class Command(BaseCommand):
    help = "Write the configuration (upstreams, endpoints, alert rules) as YAML."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--output", "-o", help="write to FILE instead of standard output")

    def handle(self, *args: Any, **options: Any) -> None:
        text = config_export()
        if options["output"]:
            Path(options["output"]).write_text(text, encoding="utf-8")
            self.stdout.write(self.style.SUCCESS(f"written to {options['output']}"))
        else:
            self.stdout.write(text, ending="")
