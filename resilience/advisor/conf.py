"""The advisor's settings: `settings.RESILIENCE_ADVISOR` over `DEFAULTS`, read
at use time (resilience.conf.AppSettings)."""
from __future__ import annotations

from typing import Any

from resilience.conf import AppSettings

DEFAULTS: dict[str, Any] = {
    # Suggestion kinds applied without a person (e.g. ["retry_waste"]); none by default.
    "AUTO_APPLY_KINDS": [],
    # Applied, dismissed and rolled-back suggestions are deleted this many days
    # after the decision (each advisor run deletes them: one statement).
    "RETENTION_DAYS": 90,
    # A dismissed suggestion is not proposed again (same upstream, kind, field)
    # for this many days.
    "DISMISS_DAYS": 7,
    # Calls that must have passed since a change was applied before its effect
    # is reported.
    "EFFECT_MIN_CALLS": 100,
    # Benchmarks queued through the API: at most this many requests and this
    # much concurrency.
    "BENCHMARK_MAX_REQUESTS": 2000,
    "BENCHMARK_MAX_CONCURRENCY": 16,
    # Each process publishes its resource snapshot at most this often (seconds);
    # snapshots older than 10 times this are left out of the resources view.
    "RESOURCES_INTERVAL": 5.0,
}

advisor_settings = AppSettings("RESILIENCE_ADVISOR", DEFAULTS)
