"""Single-flight: concurrent identical calls share one execution.

Within a process, the first caller for a key (the leader) runs the function;
callers arriving while it runs wait for its result (or its exception). Across
processes, the leader also holds a cache lock (`flight:<key>`, on Redis while
it is up): a process that finds the lock taken polls the cache for the result
the leader stores, and only runs the function itself if the leader finished
without storing one (it failed) or the wait reached its limit.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from resilience.cache import default_cache

T = TypeVar("T")

POLL_INTERVAL = 0.01


class SingleFlight:
    """Per-process single-flight group (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[str, Future] = {}

    def run(self, key: str, fn: Callable[[], T], *, wait: float,
            shared_result: Callable[[], Any] | None = None) -> tuple[T | Any, bool]:
        """Run `fn` once for all concurrent callers of `key`.

        Returns `(result, shared)`: `shared` is False for the caller that ran
        `fn`, True for callers that got someone else's result. `wait` bounds
        how long a follower waits. `shared_result`, when given, turns on the
        cross-process mode: it reads the result another process stored (None
        while there is none).
        """
        with self._lock:
            future = self._calls.get(key)
            leader = future is None
            if leader:
                future = self._calls[key] = Future()
        if not leader:
            return future.result(timeout=wait), True
        try:
            if shared_result is not None:
                result, shared = self._run_across_processes(key, fn, wait, shared_result)
            else:
                result, shared = fn(), False
        except BaseException as err:
            future.set_exception(err)
            raise
        else:
            future.set_result(result)
            return result, shared
        finally:
            with self._lock:
                self._calls.pop(key, None)

    def _run_across_processes(self, key: str, fn: Callable[[], T], wait: float,
                              shared_result: Callable[[], Any]) -> tuple[T | Any, bool]:
        lock = default_cache().lock(f"flight:{key}", timeout=wait + 1)
        if lock.acquire(blocking=False):
            try:
                return fn(), False
            finally:
                try:
                    lock.release()
                except Exception:  # expired or the store switched: nothing to undo
                    pass
        # Another process leads: wait for the result it stores.
        give_up = time.monotonic() + wait
        while time.monotonic() < give_up:
            found = shared_result()
            if found is not None:
                return found, True
            if lock.acquire(blocking=False):
                # The leader is done: it stored a result just now, or it failed.
                try:
                    found = shared_result()
                    return (found, True) if found is not None else (fn(), False)
                finally:
                    try:
                        lock.release()
                    except Exception:
                        pass
            time.sleep(POLL_INTERVAL)
        return fn(), False
