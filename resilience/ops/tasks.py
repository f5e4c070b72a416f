"""The operations' scheduled job: one health probe per upstream with a health
path and a `probe_interval`, declared here for the jobs engine; the result
is kept (ProbeResult) and `health_changed` is sent when health changes. A
probe that fails is a result (ok false), not a failed job."""
from __future__ import annotations

from typing import Any

from resilience.jobs.models import ProbeResult
from resilience.jobs.registry import job
from resilience.jobs.schedules import Schedule, schedule_source_declare
from resilience.models import Upstream
from resilience.ops.services import upstream_probe
from resilience.signals import health_changed


@job(name="resilience.probe", attempts=1, timeout=120)
def upstream_health_probe(*, name: str) -> dict[str, Any]:
    """Probe upstream `name`'s health path once, keep the result, and send
    `health_changed` when its health differs from the previous probe's."""
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


def probe_schedules() -> list[Schedule]:
    """One schedule per enabled upstream with a health path and a probe interval."""
    return [Schedule(key=f"probe:{name}", job="resilience.probe", interval=interval,
                     args={"name": name}, priority="high")
            for name, interval in Upstream.objects.filter(enabled=True, probe_interval__gt=0)
            .exclude(health_path="").values_list("name", "probe_interval")]


schedule_source_declare(key="probes", source=probe_schedules)
