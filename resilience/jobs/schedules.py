"""Schedules: what runs on an interval, and the tick that queues it.

Every `jobs_worker` runs `schedules_tick()` about once a second. Exactly one
job is queued per schedule and interval across the cluster: the interval's
number is part of the job's `unique_key` (a unique column, so a second insert
fails in the database), and a short lock keeps the other workers from even
trying while one is ticking.

The engine knows no application task: each task declares its schedule next
to its definition, with `schedule_declare` (a fixed interval) or
`schedule_source_declare` (a function that returns the schedules at tick time,
for intervals read from settings or rows), and `schedules()` reads the
declarations. The modules that declare are imported by AppConfig.ready.
The engine's own: `resilience.prune` hourly, `resilience.reap` every minute
(resilience.jobs.tasks); the others are in resilience.ops.tasks (probes),
resilience.advisor.tasks and resilience.alerts.tasks.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from resilience.client.locks import Lock
from resilience.jobs.runner import job_enqueue

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Schedule:
    key: str
    job: str
    interval: int
    args: dict[str, Any] = field(default_factory=dict)
    priority: str = "normal"

    def slot(self, now: datetime) -> int:
        return int(now.timestamp() // self.interval)


ScheduleSource = Callable[[], list[Schedule]]

# Filled at import time by the modules that define tasks (keyed, so a module
# imported twice declares once).
_sources: dict[str, ScheduleSource] = {}


def schedule_source_declare(*, key: str, source: ScheduleSource) -> None:
    """Declare `source`, called on every tick for the schedules it returns."""
    _sources[key] = source


def schedule_declare(*, key: str, job: str, interval: int, priority: str = "normal",
                     args: dict[str, Any] | None = None) -> None:
    """Declare one fixed schedule: job `job` every `interval` seconds."""
    fixed = Schedule(key=key, job=job, interval=interval, args=args or {}, priority=priority)
    schedule_source_declare(key=key, source=lambda: [fixed])


def schedules() -> list[Schedule]:
    """Every declared schedule, as the declarations give them now."""
    return [schedule for source in list(_sources.values()) for schedule in source()]


def schedules_tick(*, now: datetime | None = None, use_lock: bool = True) -> list[str]:
    """Queue every schedule whose current interval has no job yet; returns the
    keys queued by this call (empty when another worker holds the tick)."""
    now = now or timezone.now()
    # fallback: with Redis out the tick takes the database's lock (one warning per outage) and
    # the schedules keep running; the unique key stays the guarantee of one job per interval.
    tick = Lock("jobs:schedules", timeout=10, blocking_timeout=0, extend=False, fallback=True)
    if use_lock and not tick.acquire():
        return []
    queued = []
    try:
        for schedule in schedules():
            key = f"{schedule.key}:{schedule.slot(now)}"
            try:
                with transaction.atomic():
                    job_enqueue(schedule.job, args=schedule.args, priority=schedule.priority, unique_key=key)
            except IntegrityError:
                continue  # this interval is already queued (by us or another worker)
            queued.append(key)
    finally:
        if use_lock:
            tick.release()
    return queued
