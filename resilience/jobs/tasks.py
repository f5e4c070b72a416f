"""The resilience app's own jobs: health probes, pruning and the reaper."""
from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.utils import timezone

from resilience.conf import resilience_settings
from resilience.jobs.models import Job, ProbeResult
from resilience.jobs.registry import job
from resilience.jobs.runner import jobs_reap
from resilience.signals import health_changed


@job(name="resilience.probe", attempts=1, timeout=120)
def upstream_health_probe(*, name: str) -> dict[str, Any]:
    """Probe upstream `name`'s health path once, keep the result, and send
    `health_changed` when its health differs from the previous probe's."""
    from resilience.ops.services import upstream_probe

    previous = ProbeResult.objects.filter(upstream=name).values_list("ok", flat=True).first()
    outcome = upstream_probe(name=name)
    error = outcome.get("error") or {}
    changed = previous is not None and previous != outcome["ok"]
    ProbeResult.objects.create(upstream=name, ok=outcome["ok"], status=outcome.get("status"),
                               latency_ms=outcome.get("latency_ms") or 0, changed=changed,
                               error=str(error.get("message", ""))[:500] if error else "")
    if changed or previous is None:
        health_changed.send(sender=upstream_health_probe, upstream=name,
                            old=None if previous is None else ("healthy" if previous else "unhealthy"),
                            new="healthy" if outcome["ok"] else "unhealthy", probe=outcome)
    return {"upstream": name, "ok": outcome["ok"], "status": outcome.get("status")}


@job(name="resilience.prune", attempts=2, timeout=600)
def jobs_prune() -> dict[str, int]:
    """Apply telemetry retention (call logs, rollups), delete finished jobs,
    engine results and old probe history."""
    from resilience.telemetry.retention import telemetry_prune

    days = timedelta(days=resilience_settings.JOB_RETENTION_DAYS)
    cutoff = timezone.now() - days
    counts = {f"telemetry_{kind}": deleted for kind, deleted in telemetry_prune().items()}
    counts["jobs"], _ = Job.objects.filter(status__in=[Job.Status.DONE, Job.Status.FAILED],
                                           finished_at__lt=cutoff).delete()
    counts["probes"] = probe_history_prune(keep=resilience_settings.PROBE_HISTORY_KEEP, older_than=days)
    counts["engine_results"] = _engine_results_prune(cutoff)
    return counts


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
