"""`manage.py config_apply FILE [--dry-run] [--prune] [--reason TEXT]`: show
the diff between FILE and the database and apply it in one transaction,
recorded in history with the reason; a bad file changes nothing and the
error names the entry and the field. `--on-start` applies `CONFIG_FILE`
when it is set (`make run` and `make serve` call it) and does nothing
otherwise."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from resilience.config.files import config_apply
from resilience.exceptions import ConfigInvalid


class Command(BaseCommand):
    help = "Apply a configuration file (upstreams, endpoints, alert rules): diff, then one transaction."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("file", nargs="?", help="the YAML file (config_export's format)")
        parser.add_argument("--dry-run", action="store_true", help="show the diff only")
        parser.add_argument("--prune", action="store_true",
                            help="also delete upstreams and alert rules the file does not list")
        parser.add_argument("--reason", default="", help="kept in each changed object's history")
        parser.add_argument("--on-start", action="store_true",
                            help="apply settings.CONFIG_FILE if set (server start), else do nothing")

    def handle(self, *args: Any, **options: Any) -> None:
        path = options["file"]
        if options["on_start"]:
            path = path or settings.CONFIG_FILE
            if not path:
                return
        if not path:
            raise CommandError("name the file to apply")
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as err:
            raise CommandError(f"cannot read {path}: {err.strerror}") from err
        reason = f"config_apply {Path(path).name}" + (f": {options['reason']}" if options["reason"] else "")
        try:
            plan = config_apply(text, reason=reason, dry_run=options["dry_run"], prune=options["prune"])
        except ConfigInvalid as err:
            raise CommandError(f"{path}: nothing changed: {err.message}") from err
        self.stdout.write(plan.text())
        if not plan.changes:
            return
        if options["dry_run"]:
            self.stdout.write(self.style.WARNING(f"dry run: {len(plan.changes)} change(s) not applied"))
        else:
            self.stdout.write(self.style.SUCCESS(f"applied {len(plan.changes)} change(s)"))
