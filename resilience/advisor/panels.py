"""Data for the dashboard's advisor and resources panels (templates
`resilience/_findings.html` and `resilience/_resources.html`). Read-only:
the panels are polled, so they never write suggestions (`advisor_run` does)."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from django.utils import timezone

from resilience.advisor.models import Suggestion
from resilience.advisor.resources import resources_view
from resilience.advisor.services import findings_compute


def findings_panel(*, now: datetime | None = None) -> dict[str, Any]:
    """{"findings": [finding dicts, most severe first], "suggestions": [open ones]}."""
    now = now or timezone.now()
    return {"generated_at": now.isoformat(),
            "findings": [f.as_dict() for f in findings_compute(now=now)],
            "suggestions": list(Suggestion.objects.filter(status=Suggestion.Status.OPEN)
                                .order_by("upstream", "kind").values(
                                    "id", "upstream", "kind", "severity", "field", "from_value", "to_value",
                                    "expected")[:100])}


def resources_panel() -> dict[str, Any]:
    """Every worker process's latest resource snapshot, formatted for the panel."""
    view = resources_view()
    for process in view["processes"]:
        process["rss_mb"] = round(process["rss_bytes"] / 2**20, 1)
    view["totals"]["rss_mb"] = round(view["totals"]["rss_bytes"] / 2**20, 1)
    return view


def advisor_panels() -> dict[str, Any]:
    """Both panels' data, for `resilience/_advisor_panels.html`."""
    return {"findings": findings_panel(), "resources": resources_panel()}
