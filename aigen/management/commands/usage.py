"""The usage ledger: `manage.py usage [--user NAME] [--since DATE] [--until DATE] [--model M] [--json]`.

A table of tokens, calls and cost per day, user and model (newest first)
with a totals line; `--json` prints the same as JSON (the body of
GET /api/ai/usage without `success`). This process writes nothing to the
ledger, so what it shows is what the workers have flushed.
"""
from __future__ import annotations

import json
from datetime import date
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.core.serializers.json import DjangoJSONEncoder

from aigen.generation.selectors import usage_list

_COLUMNS = ("day", "username", "model", "prompt_tokens", "cached_tokens", "completion_tokens", "calls",
            "cost")


def _date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise CommandError(f"{value!r} is not a date (YYYY-MM-DD).") from None


class Command(BaseCommand):
    help = "Show the usage ledger: tokens, calls and cost per day, user and model."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--user", help="Only this user's usage (a username).")
        parser.add_argument("--since", type=_date, help="From this UTC day (YYYY-MM-DD), inclusive.")
        parser.add_argument("--until", type=_date, help="To this UTC day (YYYY-MM-DD), inclusive.")
        parser.add_argument("--model", help="Only this model.")
        parser.add_argument("--limit", type=int, default=1000, help="At most this many rows (default 1000).")
        parser.add_argument("--json", action="store_true", help="Print JSON instead of a table.")

    def handle(self, *args: Any, **options: Any) -> None:
        user_id = None
        if options["user"]:
            User = get_user_model()
            user_id = User.objects.filter(**{User.USERNAME_FIELD: options["user"]}).values_list(
                "pk", flat=True).first()
            if user_id is None:
                raise CommandError(f"No user {options['user']!r}.")
        if options["since"] and options["until"] and options["since"] > options["until"]:
            raise CommandError("--until must not be before --since.")
        listed = usage_list(user_id=user_id, since=options["since"], until=options["until"],
                            model=options["model"], limit=max(1, options["limit"]))
        if options["json"]:
            self.stdout.write(json.dumps(listed, cls=DjangoJSONEncoder, indent=2))
            return
        self._table(listed)

    def _table(self, listed: dict[str, Any]) -> None:
        rows = [[str(row[name]) for name in _COLUMNS] for row in listed["rows"]]
        totals = listed["totals"]
        rows.append(["total", "", "", *(str(totals[name]) for name in _COLUMNS[3:])])
        widths = [max(len(name), *(len(row[i]) for row in rows)) for i, name in enumerate(_COLUMNS)]
        self.stdout.write(self.style.MIGRATE_HEADING(
            "  ".join(name.ljust(width) for name, width in zip(_COLUMNS, widths, strict=True))))
        for row in rows:
            self.stdout.write("  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)))
