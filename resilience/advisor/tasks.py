"""The advisor's scheduled run (resilience.jobs): every `ADVISE_INTERVAL`
seconds one worker in the cluster runs `advisor_run()`, so suggestions stay
in step with the findings, kinds named in `AUTO_APPLY_KINDS` are applied, and
the effect of applied ones is measured even when nobody is looking."""
from __future__ import annotations

from typing import Any

from resilience.advisor.services import advisor_run
from resilience.jobs.registry import job
from resilience.jobs.schedules import schedule_declare

#: Seconds between scheduled advisor runs (resilience.jobs.schedules).
ADVISE_INTERVAL = 300


@job(name="resilience.advise", attempts=1, timeout=300)
def advisor_run_job() -> dict[str, Any]:
    report = advisor_run()
    return {"findings": len(report["findings"]),
            "open_suggestions": sum(s.status == "open" for s in report["suggestions"])}


schedule_declare(key="advise", job="resilience.advise", interval=ADVISE_INTERVAL, priority="low")
