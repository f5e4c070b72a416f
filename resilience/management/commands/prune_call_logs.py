"""`manage.py prune_call_logs --older-than 7d`: enforce call-log retention."""
from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from resilience.conf import resilience_settings
from resilience.services import call_logs_prune

UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_age(text: str) -> timedelta:
    """`7d`, `12h`, `30m`, `90s`, `2w` -> timedelta."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhdw])\s*", text or "")
    if not match:
        raise ValueError(f"invalid age {text!r}: use a number and a unit, e.g. 7d, 12h, 30m")
    return timedelta(**{UNITS[match[2]]: int(match[1])})


class Command(BaseCommand):
    help = "Delete call logs older than an age (default: the CALL_LOG_RETENTION_DAYS setting)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--older-than", help="age such as 7d, 12h, 30m (default: retention setting)")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["older_than"]:
            try:
                age = parse_age(options["older_than"])
            except ValueError as err:
                raise CommandError(str(err)) from err
        else:
            age = timedelta(days=resilience_settings.CALL_LOG_RETENTION_DAYS)
        deleted = call_logs_prune(older_than=age)
        self.stdout.write(self.style.SUCCESS(f"deleted {deleted} call log(s) older than {age}"))
