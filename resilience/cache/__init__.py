"""The cache: Django's cache framework on django-redis, falling back to local memory.

The public face of the package; import from here, not from its modules:
`FallbackCache` (the backend `CACHES` names as `resilience.cache.FallbackCache`),
`default_cache()` (the shared instance for hot paths), `cache_is_shared()`
(whether a store is seen by every process now), `cache_key()` and
`NAMESPACES` (namespaced keys), `reset_engines()` (tests). Cache services and
selectors (`cache_clear`, `cache_stats`) are in `resilience.cache.ops`.

Modules, one concern each: `keys` (namespaces), `local` (the local-memory
store and lock), `engine` (Redis or memory: outage, probe, recovery), `stats`
(counters and their shared flush), `backend` (the Django backend and its
lock), `registry` (the shared default instance, reset, fork and exit hooks),
`breakers` (the shared circuit breakers' state in the cache and its reads,
under the client's breakers and telemetry's displays).

Who may import it: every floor above storage (the client, telemetry, jobs,
the rooms and edges). It imports only Django, its own modules and
resilience.signals: a cleared namespace is announced (`cache_cleared`), never
passed up to the client by a call.
"""
from resilience.cache.backend import FallbackCache, FallbackLock
from resilience.cache.keys import NAMESPACES, cache_key
from resilience.cache.registry import cache_is_shared, default_cache, reset_engines

__all__ = ["NAMESPACES", "FallbackCache", "FallbackLock", "cache_is_shared", "cache_key", "default_cache",
           "reset_engines"]
