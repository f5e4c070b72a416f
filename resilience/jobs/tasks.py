"""The engine's own jobs and their schedules: pruning (retention of jobs,
probe history, engine results and telemetry) and the reaper."""
from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.utils import timezone

from resilience.conf import resilience_settings
from resilience.jobs.models import Job, ProbeResult
from resilience.jobs.registry import job
from resilience.jobs.runner import jobs_reap
from resilience.jobs.schedules import schedule_declare
from resilience.telemetry.retention import telemetry_prune


@job(name="resilience.prune", attempts=2, timeout=600)
def jobs_prune() -> dict[str, int]:
    """Apply telemetry retention (call logs, rollups), delete finished jobs,
    engine results and old probe history."""
    days = timedelta(days=resilience_settings.JOB_RETENTION_DAYS)
    cutoff = timezone.now() - days
    counts = {f"telemetry_{kind}": deleted for kind, deleted in telemetry_prune().items()}
    counts["jobs"], _ = Job.objects.filter(status__in=[Job.Status.DONE, Job.Status.FAILED],
                                           finished_at__lt=cutoff).delete()
    counts["probes"] = probe_history_prune(keep=resilience_settings.PROBE_HISTORY_KEEP, older_than=days)
    counts["engine_results"] = _engine_results_prune(cutoff)
    return counts


schedule_declare(key="prune", job="resilience.prune", interval=3600, priority="low")


def probe_history_prune(*, keep: int, older_than: timedelta) -> int:
    """Keep at most `keep` probe results per upstream, none older than `older_than`."""
    deleted, _ = ProbeResult.objects.filter(created_at__lt=timezone.now() - older_than).delete()
    for name in ProbeResult.objects.values_list("upstream", flat=True).distinct():
        edge = ProbeResult.objects.filter(upstream=name).values_list("id", flat=True)[keep:keep + 1]
        if edge:
            more, _ = ProbeResult.objects.filter(upstream=name, id__lte=edge[0]).delete()
            deleted += more
    return deleted


def _engine_results_prune(cutoff: Any) -> int:
    from django_tasks import task_backends

    if not hasattr(task_backends["default"], "id_function"):
        return 0  # RQ expires its own results
    from django_tasks_db.models import DBTaskResult

    deleted, _ = DBTaskResult.objects.finished().filter(finished_at__lt=cutoff).delete()
    return deleted


@job(name="resilience.reap", attempts=1, timeout=120)
def jobs_reap_job() -> int:
    return jobs_reap()


schedule_declare(key="reap", job="resilience.reap", interval=60)
