"""The process's cache instances: the shared default, reset for tests, fork and exit hooks.

Owns `default_cache()` (one shared `FallbackCache` for hot paths, forgotten
when `CACHES` changes), `reset_engines()` (tests: forget every engine and
Django's per-thread backends) and the process hooks: pending statistics are
flushed at exit, and a forked worker restarts its engines' flushers.

Callers: anyone (`default_cache`); tests and benchmarks (`reset_engines`).
"""
from __future__ import annotations

import atexit
import os
from typing import Any

from django.core.cache.backends.base import BaseCache
from django.core.signals import setting_changed

from resilience.cache.backend import FallbackCache
from resilience.cache.engine import engines_all, engines_forget

_shared_default: FallbackCache | None = None


def cache_is_shared(store: Any) -> bool:
    """Whether entries in `store` are seen by every process right now (the
    project's FallbackCache says so; any other backend is taken as local)."""
    return bool(getattr(store, "shared", False))


def default_cache() -> BaseCache:
    """The default cache for hot paths: one shared instance when it is a
    FallbackCache (thread-safe: all its state is in the process-wide engine),
    skipping the per-thread lookup behind `django.core.cache.cache`; Django's
    per-thread instance for any other backend."""
    global _shared_default
    shared = _shared_default
    if shared is not None:
        return shared
    from django.core.cache import caches

    backend = caches["default"]
    if isinstance(backend, FallbackCache):
        _shared_default = backend
    return backend


def _forget_default(*, setting: str = "CACHES", **kwargs: Any) -> None:
    global _shared_default
    if setting == "CACHES":
        _shared_default = None


def reset_engines() -> None:
    """Forget every engine (tests): the next backend instance starts fresh.

    Django keeps one backend instance per thread, each bound to its engine, so
    those instances are dropped too (as Django's own tests do when CACHES
    changes); otherwise one thread would keep a forgotten engine.
    """
    from asgiref.local import Local
    from django.core.cache import caches

    engines_forget()
    caches._connections = Local()
    _forget_default()


def _flush_all_at_exit() -> None:
    for engine in engines_all():
        engine.close()


def _after_fork_in_child() -> None:
    for engine in engines_all():
        engine.after_fork()


atexit.register(_flush_all_at_exit)
setting_changed.connect(_forget_default)
os.register_at_fork(after_in_child=_after_fork_in_child)
