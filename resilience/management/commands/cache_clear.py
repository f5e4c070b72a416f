"""`manage.py cache_clear`: remove cached entries by namespace and pattern."""
from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from resilience.cache import NAMESPACES
from resilience.cache.ops import UnknownNamespace, cache_clear


class Command(BaseCommand):
    help = "Clear cached entries by namespace (ai, http, ...) on Redis or the local-memory fallback."

    def add_arguments(self, parser: CommandParser) -> None:
        target = parser.add_mutually_exclusive_group(required=True)
        target.add_argument("--namespace", action="append", metavar="NAME",
                            help=f"namespace to clear (repeatable): {', '.join(sorted(NAMESPACES))}")
        target.add_argument("--all", action="store_true", help="every namespace of this service")
        parser.add_argument("--pattern", default="*",
                            help="glob within the namespace, e.g. 'github:*' (default: *)")
        parser.add_argument("--dry-run", action="store_true", help="count, do not delete")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            removed = cache_clear(namespaces=None if options["all"] else options["namespace"],
                                  pattern=options["pattern"], dry_run=options["dry_run"])
        except UnknownNamespace as err:
            raise CommandError(str(err)) from err
        verb = "would remove" if options["dry_run"] else "removed"
        for name, count in removed.items():
            self.stdout.write(f"{name}: {verb} {count} key(s)")
        self.stdout.write(self.style.SUCCESS(f"total: {verb} {sum(removed.values())} key(s)"))
