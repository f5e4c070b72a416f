"""Read-side queries for the API: the registry as shown to clients, AI cache statistics."""
from __future__ import annotations

from typing import Any

from aigen.generation.providers import provider_info
from aigen.generation.registry import get_registry
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
