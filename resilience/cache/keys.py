"""Cache keys and their namespaces.

Owns `NAMESPACES`, the known key namespaces (`ai:...`, `http:...`): the
namespace is the part of a key before the first colon. Statistics are counted
per namespace and pattern operations clear one namespace without touching
another.

Anyone may call `cache_key()`: code that stores something in the cache builds
its key here. `namespace_of()` is for the cache package's statistics.
"""
from __future__ import annotations

#: Known key namespaces. Keys outside them are counted under "other".
NAMESPACES: frozenset[str] = frozenset(
    {"ai", "http", "breaker", "flight", "stats", "policy", "calls", "throttle", "misc"}
)


def cache_key(namespace: str, *parts: object) -> str:
    """Build a namespaced key: `cache_key("http", "github", digest)` -> `http:github:<digest>`.

    Raises `ValueError` for a namespace not in `NAMESPACES`.
    """
    if namespace not in NAMESPACES:
        raise ValueError(f"unknown cache namespace {namespace!r}; known: {sorted(NAMESPACES)}")
    return ":".join([namespace, *(str(p) for p in parts)])


def namespace_of(key: str) -> str:
    """The namespace a key (or glob) is counted under: its first part, or "other"."""
    ns = key.partition(":")[0]
    return ns if ns in NAMESPACES else "other"
