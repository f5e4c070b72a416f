"""`manage.py prune_telemetry`: enforce retention of call-log rows, minute,
hour and day rollups, AI generation records and the usage ledger in bounded
batches (`prune_call_logs` is the same command under its old name)."""
from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from resilience.telemetry.retention import TARGETS, retention_of, telemetry_prune

UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
OPTIONS = {"rows": "older_than", "minutes": "minutes_older_than", "hours": "hours_older_than",
           "days": "days_older_than", "generations": "generations_older_than", "usage": "usage_older_than"}


def parse_age(text: str) -> timedelta:
    """`7d`, `12h`, `30m`, `90s`, `2w` -> timedelta."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhdw])\s*", text or "")
    if not match:
        raise ValueError(f"invalid age {text!r}: use a number and a unit, e.g. 7d, 12h, 30m")
    return timedelta(**{UNITS[match[2]]: int(match[1])})


class Command(BaseCommand):
    help = ("Delete call-log rows, minute, hour and day rollups older than their retention "
            "(CALL_LOG_RETENTION_DAYS, ROLLUP_MINUTE_RETENTION_DAYS, ROLLUP_HOUR_RETENTION_DAYS, "
            "ROLLUP_DAY_RETENTION_DAYS), AI generation records older than AI_GENERATION_RETENTION_DAYS "
            "and usage ledger rows older than USAGE_RETENTION_DAYS, "
            "in batches of PRUNE_BATCH_SIZE rows.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--older-than", help="call-log rows: age such as 7d, 12h, 30m (default: setting)")
        parser.add_argument("--minutes-older-than", help="minute rollups: age (default: setting)")
        parser.add_argument("--hours-older-than", help="hour rollups: age (default: setting)")
        parser.add_argument("--days-older-than", help="day rollups: age (default: setting)")
        parser.add_argument("--generations-older-than",
                            help="AI generation records: age (default: AI_GENERATION_RETENTION_DAYS)")
        parser.add_argument("--usage-older-than",
                            help="AI usage ledger rows (by day): age (default: USAGE_RETENTION_DAYS)")
        parser.add_argument("--batch-size", type=int, help="rows per DELETE (default: PRUNE_BATCH_SIZE)")

    def handle(self, *args: Any, **options: Any) -> None:
        ages: dict[str, timedelta] = {}
        for kind in TARGETS:
            option = OPTIONS.get(kind)
            if option and options[option]:
                try:
                    ages[kind] = parse_age(options[option])
                except ValueError as err:
                    raise CommandError(str(err)) from err
            else:
                ages[kind] = retention_of(kind)
        if options["batch_size"] is not None and options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1")

        def progress(kind: str, deleted: int) -> None:
            if options["verbosity"] > 1:
                self.stdout.write(f"  {TARGETS[kind].label}s: {deleted} deleted so far")

        deleted = telemetry_prune(older_than=ages, batch_size=options["batch_size"], progress=progress)
        for kind, target in TARGETS.items():
            self.stdout.write(self.style.SUCCESS(
                f"deleted {deleted[kind]} {target.label}(s) older than {ages[kind]}"))
