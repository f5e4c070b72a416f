"""`manage.py jobs_worker`: run queued jobs and tick the schedules.

Run one or more per host, next to the web server (see README, Jobs). SIGTERM
or Ctrl-C finishes the job in hand and stops; a second one stops at once
(the job is then re-run after its lease, see resilience.jobs.runner).
"""
from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from resilience.jobs.worker import ALL_QUEUES, backend_kind, worker_run


class Command(BaseCommand):
    help = "Run background jobs (high, default, low queues) and tick the schedules."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--queues", default=",".join(ALL_QUEUES),
                            help="Comma-separated queues, highest first (default: high,default,low).")
        parser.add_argument("--batch", action="store_true", help="Run what is queued now, then exit.")
        parser.add_argument("--no-scheduler", action="store_true",
                            help="Do not tick the schedules (another worker does).")
        parser.add_argument("--interval", type=float, default=1.0,
                            help="Seconds between polls of an empty database queue (default 1).")
        parser.add_argument("--max-tasks", type=int, default=None, help="Exit after this many jobs.")
        parser.add_argument("--worker-id", default=None, help="Unique id (default: random).")

    def handle(self, *args: Any, queues: str, batch: bool, no_scheduler: bool, interval: float,
               max_tasks: int | None, worker_id: str | None, **options: Any) -> None:
        names = [q.strip() for q in queues.split(",") if q.strip()]
        if unknown := sorted(set(names) - set(ALL_QUEUES)):
            raise CommandError(f"unknown queue(s) {', '.join(unknown)}; use {', '.join(ALL_QUEUES)}")
        if interval <= 0:
            raise CommandError("--interval must be positive.")
        self.stdout.write(f"jobs worker on the {backend_kind()} backend, queues {', '.join(names)}"
                          f"{'' if no_scheduler else ', ticking schedules'}{' (batch)' if batch else ''}")
        worker_run(queues=names, batch=batch, scheduler=not no_scheduler, interval=interval,
                   max_tasks=max_tasks, worker_id=worker_id)
