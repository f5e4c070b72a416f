"""`manage.py alerts_export --prometheus [--output FILE]`: the enabled alert
rules as a Prometheus rules file (for Prometheus and Alertmanager)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from resilience.alerts.prometheus import prometheus_rules


class Command(BaseCommand):
    help = "Write the alert rules in another system's format (--prometheus: a Prometheus rules file)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--prometheus", action="store_true", help="a Prometheus rules file (YAML)")
        parser.add_argument("--output", "-o", help="write to FILE instead of standard output")

    def handle(self, *args: Any, **options: Any) -> None:
        if not options["prometheus"]:
            raise CommandError("name the format: --prometheus")
        text = prometheus_rules()
        if options["output"]:
            Path(options["output"]).write_text(text, encoding="utf-8")
            self.stdout.write(self.style.SUCCESS(f"written to {options['output']}"))
        else:
            self.stdout.write(text, ending="")
