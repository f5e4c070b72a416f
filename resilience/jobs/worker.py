"""Running jobs: the engine's worker plus the schedule ticker.

`worker_run(...)` is what `manage.py jobs_worker` calls. The database backend
runs django-tasks-db's worker loop (all three queues, high first by priority
number); RQ runs an RQ worker on the queues `high`, `default`, `low` in that
order (RQ takes from the first non-empty queue), with RQ's own scheduler for
delayed attempts. Either way a daemon thread ticks the schedules about once a
second (`scheduler=False` leaves that to other workers).
"""
from __future__ import annotations

import logging
import threading
import time

from django.db import close_old_connections, connections
from django.utils.crypto import get_random_string
from django_tasks import task_backends

from resilience.cache import default_cache
from resilience.jobs.runner import QUEUES
from resilience.jobs.schedules import schedules_tick

logger = logging.getLogger(__name__)
ALL_QUEUES = list(QUEUES.values())  # high, default, low
#: Cache key of the last successful schedule tick of any worker (unix time):
#: `/metrics` exports it, so a cluster whose workers all died is visible.
LAST_TICK_KEY = "jobs:scheduler:last_tick"


def backend_kind() -> str:
    """"database" or "rq": the engine behind the default task backend."""
    return "rq" if type(task_backends["default"]).__name__ == "RQBackend" else "database"


class ScheduleTicker(threading.Thread):
    """Calls `schedules_tick()` every `every` seconds until stopped. A failing
    tick is logged once with its traceback when ticks start failing and once
    when they work again, not every second (the next tick always tries);
    a Redis outage alone does not fail a tick (the tick's lock falls back to
    the database's, see resilience.jobs.schedules)."""

    def __init__(self, every: float = 1.0) -> None:
        super().__init__(name="jobs-schedules", daemon=True)
        self.every = every
        self.stopped = threading.Event()
        self.failing = False

    def run(self) -> None:
        while not self.stopped.wait(self.every):
            self.tick()
        connections.close_all()

    def tick(self) -> None:
        try:
            close_old_connections()
            schedules_tick()
        except Exception:  # any failure: the next tick tries again; said once per streak
            if not self.failing:
                logger.exception("schedule ticks failing; trying again every %g s", self.every)
            self.failing = True
            return
        default_cache().set(LAST_TICK_KEY, time.time(), timeout=None)
        if self.failing:
            logger.info("schedule ticks work again")
            self.failing = False


def worker_run(*, queues: list[str] | None = None, batch: bool = False, scheduler: bool = True,
               interval: float = 1.0, max_tasks: int | None = None, worker_id: str | None = None) -> None:
    """Run jobs until stopped (SIGTERM/SIGINT finish the current job first);
    `batch`: until the queues are empty (one schedule tick first)."""
    queues = queues or ALL_QUEUES
    worker_id = worker_id or get_random_string(20)
    ticker = None
    if scheduler and batch:
        schedules_tick()
    elif scheduler:
        ticker = ScheduleTicker()
        ticker.start()
    try:
        if backend_kind() == "rq":
            _run_rq(queues, batch=batch, max_tasks=max_tasks, worker_id=worker_id)
        else:
            _run_database(queues, batch=batch, interval=interval, max_tasks=max_tasks, worker_id=worker_id)
    finally:
        if ticker is not None:
            ticker.stopped.set()


def _run_database(queues: list[str], *, batch: bool, interval: float, max_tasks: int | None,
                  worker_id: str) -> None:
    from django_tasks_db.management.commands.db_worker import Worker

    worker = Worker(queue_names=queues, interval=interval, batch=batch, backend_name="default",
                    startup_delay=not batch, max_tasks=max_tasks, worker_id=worker_id,
                    excluded_queue_names=[])
    if threading.current_thread() is threading.main_thread():
        worker.configure_signals()
    worker.run()


def _run_rq(queues: list[str], *, batch: bool, max_tasks: int | None, worker_id: str) -> None:
    import django_rq
    from django_tasks_rq.backend import Job as RQJob
    from rq import SimpleWorker

    # SimpleWorker in batch mode (tests, one-off runs): no fork per job.
    worker = django_rq.get_worker(*queues, job_class=RQJob, name=worker_id,
                                  worker_class=SimpleWorker if batch else None)
    worker.work(burst=batch, max_jobs=max_tasks, with_scheduler=True, logging_level="INFO")
