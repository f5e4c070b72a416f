"""Read side of jobs and probes: job status counts, upstream health."""
from __future__ import annotations

from typing import Any

from django.db.models import Count

from resilience.jobs.models import Job, ProbeResult
from resilience.models import Upstream


def upstream_health() -> dict[str, Any]:
    """Each probed upstream's last probe; `ok` is false when any is unhealthy."""
    names = list(Upstream.objects.filter(enabled=True, probe_interval__gt=0)
                 .exclude(health_path="").values_list("name", flat=True))
    upstreams = {}
    for name in names:
        last = ProbeResult.objects.filter(upstream=name).first()
        if last is not None:
            upstreams[name] = {"healthy": last.ok, "status": last.status, "at": last.created_at.isoformat(),
                               "error": last.error or None}
    unhealthy = sorted(name for name, state in upstreams.items() if not state["healthy"])
    return {"ok": not unhealthy, "unhealthy": unhealthy, "probed": upstreams}


def job_counts(*, group: str | None = None) -> dict[str, int]:
    """Jobs by status (all four keys present), optionally of one batch."""
    rows = Job.objects.all() if group is None else Job.objects.filter(group=group)
    counts = {status: 0 for status in Job.Status.values}
    for row in rows.values("status").annotate(n=Count("id")).order_by():
        counts[row["status"]] = row["n"]
    return counts
