"""Cache services and selectors: clear by namespace, read statistics.

Work on whichever store serves (Redis or the local-memory fallback) through
the `FallbackCache` API, so they behave the same in both modes. Callers: the
thin layers (API views, dashboard, metrics, management commands).
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.core.cache import cache

from resilience.cache.keys import NAMESPACES
from resilience.signals import cache_cleared


class UnknownNamespace(ValueError):
    pass


def _validate(namespaces: Iterable[str]) -> list[str]:
    names = list(namespaces)
    unknown = sorted(set(names) - NAMESPACES)
    if unknown:
        raise UnknownNamespace(
            f"unknown cache namespace(s): {', '.join(unknown)}; known: {', '.join(sorted(NAMESPACES))}"
        )
    return names


def cache_clear(*, namespaces: Iterable[str] | None = None, pattern: str = "*",
                dry_run: bool = False) -> dict[str, int]:
    """Delete keys matching `pattern` in each namespace (all of them when None).

    Returns the number of keys removed per namespace (or that would be, with
    `dry_run`). Keys of other applications sharing the Redis are never touched:
    everything is scoped to this backend's KEY_PREFIX and the namespace.
    """
    names = sorted(NAMESPACES) if namespaces is None else _validate(namespaces)
    removed: dict[str, int] = {}
    for name in names:
        glob = f"{name}:{pattern}"
        if dry_run:
            removed[name] = sum(1 for _ in cache.iter_keys(glob))
        else:
            removed[name] = cache.delete_pattern(glob)
    if not dry_run:
        for name in names:
            cache_cleared.send(sender=None, namespace=name)
    return removed


def cache_stats(*, namespace: str | None = None) -> dict[str, Any]:
    """Hits, misses, sets, deletes, errors, fallbacks, hit rate and the serving
    backend, summed across worker processes while Redis is up."""
    if namespace is not None:
        _validate([namespace])
    stats = cache.stats(namespace=namespace)
    lookups = stats["hits"] + stats["misses"]
    stats["total_requests"] = lookups
    stats["hit_rate"] = round(stats["hits"] / lookups, 4) if lookups else 0.0
    stats["hit_ratio"] = stats["hit_rate"]  # the name the AI cache statistics use for the number
    return stats
