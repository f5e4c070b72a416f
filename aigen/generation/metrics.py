"""Prometheus counters of AI generations, counted in the process that served
each request (`generation_record` calls `generation_count`), so a scrape
reads counters, never the Generation table (multiprocess mode sums the
workers, as for every event metric: resilience.telemetry.metrics).

Labels come from configuration only: a template id becomes a label when the
registry defines it, anything else is `other` (a request can name any
template id; user input never makes a new series). Provider and model are
the configured provider's.
"""
from __future__ import annotations

from typing import Any

from prometheus_client import Counter

OTHER = "other"

GENERATIONS = Counter(
    "aigen_generations", "Generate requests, by template, provider, model, outcome, cache use.",
    ["template", "provider", "model", "outcome", "cached"])
TOKENS = Counter(
    "aigen_tokens", "Tokens spent with the provider (cache hits excluded).",
    ["template", "provider", "model", "kind"])


def template_label(template_id: Any) -> str:
    """`template_id` when the registry defines it, else `other`."""
    from aigen.generation.registry import RegistryError, get_registry

    try:
        known = get_registry().templates
    except RegistryError:
        return OTHER
    return template_id if isinstance(template_id, str) and template_id in known else OTHER


def generation_count(row: dict[str, Any]) -> None:
    """Count one generation record (see aigen.generation.records.generation_row)."""
    labels = (template_label(row.get("template_id")), str(row.get("provider") or ""),
              str(row.get("model") or ""))
    GENERATIONS.labels(*labels, str(row.get("outcome") or ""), "true" if row.get("cached") else "false").inc()
    if not row.get("cached"):
        for kind in ("prompt", "completion"):
            spent = row.get(f"{kind}_tokens") or 0
            if spent:
                TOKENS.labels(*labels, kind).inc(spent)
