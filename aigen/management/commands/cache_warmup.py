"""Fill the AI cache ahead of users: `manage.py cache_warmup --file requests.yaml`
or `--template emergency_plan` (its sample data), `--concurrency N`, `--force`."""
from __future__ import annotations

import time
from typing import Any

from django.core.cache import cache
from django.core.management.base import BaseCommand, CommandError

from aigen.warmup import (
    WarmupError,
    WarmupOutcome,
    cache_warmup,
    warmup_requests_for_template,
    warmup_requests_load,
)


class Command(BaseCommand):
    help = ("Generate AI answers into the cache: every request in a JSON/YAML list (--file), or every "
            "section of a template with its sample data (--template). Exits non-zero when any failed.")

    def add_arguments(self, parser: Any) -> None:
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument("--file", help="JSON or YAML list of {template_id, section_id, data}.")
        source.add_argument("--template", help="A template id: warm every section with its sample data.")
        parser.add_argument("--concurrency", type=int, default=4, help="Requests at a time (default 4).")
        parser.add_argument("--force", action="store_true",
                            help="Regenerate entries that are already cached.")

    def handle(self, *args: Any, file: str | None, template: str | None, concurrency: int, force: bool,
               **options: Any) -> None:
        if concurrency < 1:
            raise CommandError("--concurrency must be at least 1.")
        try:
            items = warmup_requests_load(file) if file else warmup_requests_for_template(template or "")
        except WarmupError as err:
            raise CommandError(str(err)) from err
        if not items:
            self.stdout.write("Nothing to warm up.")
            return
        if not getattr(cache, "redis_configured", True):
            self.stdout.write(self.style.WARNING(
                "No REDIS_URL: the cache is this process's memory, so what is warmed here is gone when "
                "the command ends. Set REDIS_URL to warm the cache the web workers share."))
        self.stdout.write(f"Warming {len(items)} request(s), {concurrency} at a time"
                          f"{' (forced)' if force else ''}...")
        started = time.monotonic()
        summary = cache_warmup(items, concurrency=concurrency, force=force, progress=self._progress)
        seconds = time.monotonic() - started
        line = (f"Done in {seconds:.1f} s: {summary.generated} generated, {summary.cached} already cached, "
                f"{summary.failed} failed.")
        if summary.failed:
            self.stdout.write(self.style.ERROR(line))
            raise CommandError(f"{summary.failed} of {len(items)} warmup request(s) failed.")
        self.stdout.write(self.style.SUCCESS(line))

    def _progress(self, done: int, total: int, outcome: WarmupOutcome) -> None:
        width = len(str(total))
        head = f"[{done:>{width}}/{total}] {outcome.item.label}"
        if outcome.status == "failed":
            self.stdout.write(self.style.ERROR(f"{head}: failed: {outcome.error}"))
        elif outcome.status == "cached":
            self.stdout.write(f"{head}: already cached")
        else:
            self.stdout.write(self.style.SUCCESS(f"{head}: generated in {outcome.latency_ms} ms"))
