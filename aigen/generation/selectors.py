"""Read-side queries for the API: the registry as shown to clients, AI cache
statistics, the usage ledger."""
from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

from django.db.models import Sum

from aigen.generation.providers import provider_info
from aigen.generation.registry import get_registry
from aigen.models import UsageLedger
from resilience.cache.ops import cache_stats


def template_list() -> dict[str, Any]:
    """Every template with its sections' fields, and the provider that serves."""
    registry = get_registry()
    return {"templates": [t.describe() for t in registry.templates.values()], **provider_info()}


def ai_cache_stats() -> dict[str, Any]:
    """Statistics of the `ai` cache namespace: hit rate as a percentage string and as a ratio."""
    stats = cache_stats(namespace="ai")
    fields = ("hits", "misses", "sets", "deletes", "errors", "fallbacks")
    counts = {name: stats.get(name, 0) for name in fields}
    counts["total_requests"] = stats.get("total_requests", counts["hits"] + counts["misses"])
    ratio = float(stats.get("hit_rate") or 0.0)
    # `hit_rate` keeps the seed's percentage string; `hit_ratio` is the number
    # (0..1), as the operations API's cache statistics give it.
    counts["hit_rate"] = f"{ratio * 100:.2f}%"
    counts["hit_ratio"] = ratio
    return {"stats": counts, "backend": stats.get("backend"), "fallback": stats.get("fallback", False),
            "scope": stats.get("scope"), "namespace": "ai"}


def usage_list(*, user_id: int | None = None, since: date | None = None, until: date | None = None,
               model: str | None = None, limit: int = 1000) -> dict[str, Any]:
    """Ledger rows (newest day first, at most `limit`) and their totals, for
    one user (None: everyone), days `since`..`until` inclusive, one model."""
    rows = UsageLedger.objects.all()
    if user_id is not None:
        rows = rows.filter(user_id=user_id)
    if since is not None:
        rows = rows.filter(day__gte=since)
    if until is not None:
        rows = rows.filter(day__lte=until)
    if model:
        rows = rows.filter(model=model)
    fields = ("prompt_tokens", "cached_tokens", "completion_tokens", "calls", "cost")
    sums = rows.aggregate(**{name: Sum(name) for name in fields})
    totals = {name: sums[name] or (Decimal(0) if name == "cost" else 0) for name in fields}
    listed = rows.order_by("-day", "user_id", "model").values(
        "day", "user_id", "user__username", "model", *fields)[:limit]
    return {"rows": [{"day": r["day"], "user_id": r["user_id"], "username": r["user__username"],
                      "model": r["model"], **{name: r[name] for name in fields}} for r in listed],
            "totals": totals}
