"""Schedules: what runs on an interval, and the tick that queues it.

Every `jobs_worker` runs `schedules_tick()` about once a second. Exactly one
job is queued per schedule and interval across the cluster: the interval's
number is part of the job's `unique_key` (a unique column, so a second insert
fails in the database), and a short lock keeps the other workers from even
trying while one is ticking.

Schedules: one health probe per upstream with a health path and a
`probe_interval`; `resilience.prune` hourly; `resilience.reap` every minute;
`resilience.advise` (the advisor, resilience.advisor.tasks) every 5 minutes;
`resilience.alerts_evaluate` every `RESILIENCE_ALERTS["EVALUATE_INTERVAL"]` seconds
(15) and `resilience.alerts_prune` hourly (resilience.alerts.tasks).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from resilience.alerts.conf import alerts_settings
from resilience.jobs.locks import Lock
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


def schedules() -> list[Schedule]:
    from resilience.models import Upstream

    found = [Schedule(key=f"probe:{name}", job="resilience.probe", interval=interval,
                      args={"name": name}, priority="high")
             for name, interval in Upstream.objects.filter(enabled=True, probe_interval__gt=0)
             .exclude(health_path="").values_list("name", "probe_interval")]
    found.append(Schedule(key="prune", job="resilience.prune", interval=3600, priority="low"))
    found.append(Schedule(key="reap", job="resilience.reap", interval=60))
    from resilience.advisor.tasks import ADVISE_INTERVAL

    found.append(Schedule(key="advise", job="resilience.advise", interval=ADVISE_INTERVAL, priority="low"))
    found.append(Schedule(key="alerts", job="resilience.alerts_evaluate",
                          interval=max(1, int(alerts_settings.EVALUATE_INTERVAL)), priority="high"))
    found.append(Schedule(key="alerts-prune", job="resilience.alerts_prune", interval=3600, priority="low"))
    return found


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
