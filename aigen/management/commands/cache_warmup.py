"""Fill the AI cache ahead of users: `manage.py cache_warmup --file requests.yaml`
or `--template emergency_plan` (its sample data), `--concurrency N`, `--force`.

`--enqueue` fans the requests out as jobs (one `aigen.generate` job each) that
the `jobs_worker` processes run, shows the batch's jobs by status as they
change, and prints the same summary when none is left to run (`--no-wait`:
queue and exit)."""
from __future__ import annotations

import time
from typing import Any

from django.core.cache import cache
from django.core.management.base import BaseCommand, CommandError

from aigen.generation.warmup import (
    WarmupBatch,
    WarmupError,
    WarmupOutcome,
    WarmupSummary,
    cache_warmup,
    warmup_batch_counts,
    warmup_batch_summary,
    warmup_enqueue,
    warmup_requests_for_template,
    warmup_requests_load,
)


class Command(BaseCommand):
    help = ("Generate AI answers into the cache: every request in a JSON/YAML list (--file), or every "
            "section of a template with its sample data (--template), here or as jobs (--enqueue). "
            "Exits non-zero when any failed.")

    sleep = staticmethod(time.sleep)  # seam: tests run a worker's batch here instead

    def add_arguments(self, parser: Any) -> None:
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument("--file", help="JSON or YAML list of {template_id, section_id, data}.")
        source.add_argument("--template", help="A template id: warm every section with its sample data.")
        parser.add_argument("--concurrency", type=int, default=4, help="Requests at a time (default 4).")
        parser.add_argument("--force", action="store_true",
                            help="Regenerate entries that are already cached.")
        parser.add_argument("--enqueue", action="store_true",
                            help="Queue one job per request for the jobs workers; show progress until done.")
        parser.add_argument("--priority", choices=["low", "normal", "high"], default="low",
                            help="With --enqueue: the jobs' priority (default low: users' jobs go first).")
        parser.add_argument("--no-wait", action="store_true",
                            help="With --enqueue: queue and exit without following the jobs.")
        parser.add_argument("--poll", type=float, default=1.0,
                            help="With --enqueue: seconds between progress checks (default 1).")

    def handle(self, *args: Any, file: str | None, template: str | None, concurrency: int, force: bool,
               enqueue: bool, priority: str, no_wait: bool, poll: float, **options: Any) -> None:
        if concurrency < 1:
            raise CommandError("--concurrency must be at least 1.")
        if (no_wait or priority != "low") and not enqueue:
            raise CommandError("--priority and --no-wait go with --enqueue.")
        if poll <= 0:
            raise CommandError("--poll must be positive.")
        try:
            items = warmup_requests_load(file) if file else warmup_requests_for_template(template or "")
        except WarmupError as err:
            raise CommandError(str(err)) from err
        if not items:
            self.stdout.write("Nothing to warm up.")
            return
        if not getattr(cache, "redis_configured", True):
            self.stdout.write(self.style.WARNING(
                "No REDIS_URL: the cache is each process's own memory, so what is warmed here (by the jobs "
                "worker with --enqueue) is not seen by the web workers. Set REDIS_URL to warm the cache "
                "they share."))
        started = time.monotonic()
        if enqueue:
            summary = self._enqueued(items, force=force, priority=priority, wait=not no_wait, poll=poll)
            if summary is None:
                return
        else:
            self.stdout.write(f"Warming {len(items)} request(s), {concurrency} at a time"
                              f"{' (forced)' if force else ''}...")
            summary = cache_warmup(items, concurrency=concurrency, force=force, progress=self._progress)
        self._summary(summary, total=len(items), seconds=time.monotonic() - started)

    def _enqueued(self, items: list, *, force: bool, priority: str, wait: bool,
                  poll: float) -> WarmupSummary | None:
        batch = warmup_enqueue(items, force=force, priority=priority)
        for outcome in batch.refused:
            self.stdout.write(self.style.ERROR(f"not queued: {outcome.item.label}: {outcome.error}"))
        self.stdout.write(f"Queued {batch.queued} job(s) as batch {batch.group}, priority {priority}"
                          f"{' (forced)' if force else ''}.")
        if not batch.queued:
            return warmup_batch_summary(batch)
        if not wait:
            self.stdout.write("Not waiting: the jobs run when a jobs_worker takes them "
                              f"(admin: Jobs, search {batch.group}).")
            if batch.refused:
                raise CommandError(f"{len(batch.refused)} of {batch.total} warmup request(s) "
                                   "were not queued.")
            return None
        self.stdout.write("Waiting for the jobs workers (manage.py jobs_worker); Ctrl-C stops waiting, "
                          "the jobs stay queued.")
        try:
            self._follow(batch, poll=poll)
        except KeyboardInterrupt:
            counts = warmup_batch_counts(batch)
            raise CommandError(f"Stopped waiting: {counts['queued']} queued and {counts['running']} running "
                               f"job(s) of {batch.group} will still run.") from None
        summary = warmup_batch_summary(batch)
        for outcome in summary.outcomes[len(batch.refused):]:
            if outcome.status == "failed":
                self.stdout.write(self.style.ERROR(f"failed: {outcome.item.label}: {outcome.error}"))
        return summary

    def _follow(self, batch: WarmupBatch, *, poll: float) -> None:
        """Print the batch's jobs by status whenever they change, until none
        is queued or running."""
        started, last = time.monotonic(), None
        while True:
            counts = warmup_batch_counts(batch)
            if counts != last:
                self.stdout.write(f"[{time.monotonic() - started:6.1f} s] queued {counts['queued']}, "
                                  f"running {counts['running']}, done {counts['done']}, "
                                  f"failed {counts['failed']}")
                last = counts
            if not counts["queued"] and not counts["running"]:
                return
            self.sleep(poll)

    def _summary(self, summary: WarmupSummary, *, total: int, seconds: float) -> None:
        line = (f"Done in {seconds:.1f} s: {summary.generated} generated, {summary.cached} already cached, "
                f"{summary.failed} failed.")
        if summary.failed:
            self.stdout.write(self.style.ERROR(line))
            raise CommandError(f"{summary.failed} of {total} warmup request(s) failed.")
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
