"""The alerts' scheduled jobs (resilience.jobs): `resilience.alerts_evaluate`
every `EVALUATE_INTERVAL` seconds and `resilience.alerts_prune` hourly, each
queued once per interval across the cluster by the schedules."""
from __future__ import annotations

from typing import Any

from resilience.alerts.conf import alerts_settings
from resilience.alerts.services import alerts_evaluate, alerts_prune
from resilience.jobs.registry import job
from resilience.jobs.schedules import Schedule, schedule_source_declare


@job(name="resilience.alerts_evaluate", attempts=1, timeout=120)
def alerts_evaluate_job() -> dict[str, Any]:
    return {"moves": len(alerts_evaluate())}


@job(name="resilience.alerts_prune", attempts=2, timeout=600)
def alerts_prune_job() -> dict[str, int]:
    return alerts_prune()


def alerts_schedules() -> list[Schedule]:
    # Read at every tick: the evaluation interval is a setting.
    return [Schedule(key="alerts", job="resilience.alerts_evaluate",
                     interval=max(1, int(alerts_settings.EVALUATE_INTERVAL)), priority="high"),
            Schedule(key="alerts-prune", job="resilience.alerts_prune", interval=3600, priority="low")]


schedule_source_declare(key="alerts", source=alerts_schedules)
