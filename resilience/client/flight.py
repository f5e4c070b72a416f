"""Single-flight: concurrent identical calls share one execution.

Within a process, the first caller for a key (the leader) runs the work;
callers arriving while it runs wait for its result (or a copy of its error:
never the leader's own exception object). Across processes, the leader also
holds a cache lock (`flight:<key>`, on Redis while it is up): a process that
finds the lock taken polls for the result the leader stores, and runs the
work itself only if the leader finished without storing one (it failed) or
the wait reached its limit.

One logic, two faces: `join`/`finish` keep the table of flights and
`across` is the cross-process protocol as a generator that yields the
seconds it wants to sleep, so `run` (threads) and `arun` (tasks) only differ
in how they wait. The resilient client drives the same pieces from its own
steps (resilience.client.cached).
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Generator
from concurrent.futures import Future
from typing import Any, TypeVar

from redis.exceptions import LockError

from resilience.cache import default_cache

logger = logging.getLogger(__name__)

T = TypeVar("T")

POLL_INTERVAL = 0.01

#: What `across` ends with: ("found", result) or ("lead", lock or None).
Across = tuple[str, Any]


def copy_error(err: BaseException) -> BaseException:
    """A fresh exception of the same kind and content, for a follower to raise
    (the leader's own object carries the leader's traceback and may be kept)."""
    copy = BaseException.__new__(type(err))
    copy.__dict__.update(getattr(err, "__dict__", {}))
    copy.args = err.args
    return copy


def release_lock(lock: Any) -> None:
    if lock is None:
        return
    try:
        lock.release()
    except LockError:  # expired, or the store switched: nothing to undo
        logger.debug("single-flight lock had expired")


class SingleFlight:
    """Per-process single-flight group (thread- and task-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[str, Future] = {}

    # -- the table ------------------------------------------------------------------
    def join(self, key: str) -> tuple[Future, bool]:
        """The flight for `key` and whether the caller leads it."""
        with self._lock:
            future = self._calls.get(key)
            if future is not None:
                return future, False
            future = self._calls[key] = Future()
            return future, True

    def finish(self, key: str, future: Future, *, result: Any = None,
               error: BaseException | None = None) -> None:
        """End the leader's flight: followers get `result` or a copy of `error`."""
        with self._lock:
            self._calls.pop(key, None)
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    @staticmethod
    def outcome(future: Future) -> Any:
        """A finished flight's result, or a copy of its error raised."""
        error = future.exception()
        if error is not None:
            raise copy_error(error) from None
        return future.result()

    # -- across processes ----------------------------------------------------------------
    @staticmethod
    def across(key: str, wait: float, shared_result: Callable[[], Any],
               first: Callable[[], Any] | None = None) -> Generator[float, None, Across]:
        """Lead across processes, or find another process's result.

        Yields seconds to sleep between polls; returns ("lead", lock) when this
        process must do the work (release the lock after storing the result;
        the lock is None when the wait ran out) or ("found", result). `first`,
        when given, is looked at before the lock is tried (the caller's own
        cache read: a result there is "found" and no lock is taken).
        """
        if first is not None:
            found = first()
            if found is not None:
                return "found", found
        lock = default_cache().lock(f"flight:{key}", timeout=wait + 1)
        if lock.acquire(blocking=False):
            return "lead", lock
        give_up = time.monotonic() + wait
        while time.monotonic() < give_up:
            found = shared_result()
            if found is not None:
                return "found", found
            if lock.acquire(blocking=False):
                # The leader is done: it stored a result just now, or it failed.
                found = shared_result()
                if found is not None:
                    release_lock(lock)
                    return "found", found
                return "lead", lock
            yield POLL_INTERVAL
        return "lead", None

    # -- the two faces ---------------------------------------------------------------------
    def run(self, key: str, fn: Callable[[], T], *, wait: float,
            shared_result: Callable[[], Any] | None = None) -> tuple[T | Any, bool]:
        """Run `fn` once for all concurrent callers of `key` (threads).

        Returns `(result, shared)`: `shared` is False for the caller that ran
        `fn`. `wait` bounds how long a follower waits (TimeoutError).
        `shared_result`, when given, turns on the cross-process mode: it reads
        the result another process stored (None while there is none).
        """
        future, leader = self.join(key)
        if not leader:
            future.exception(timeout=wait)  # raises TimeoutError when the wait runs out
            return self.outcome(future), True
        lock = None
        try:
            if shared_result is not None:
                steps = self.across(key, wait, shared_result)
                try:
                    while True:
                        time.sleep(next(steps))
                except StopIteration as stop:
                    kind, value = stop.value
                if kind == "found":
                    self.finish(key, future, result=value)
                    return value, True
                lock = value
            result = fn()
        except BaseException as err:
            self.finish(key, future, error=err)
            raise
        finally:
            release_lock(lock)
        self.finish(key, future, result=result)
        return result, False

    async def arun(self, key: str, fn: Callable[[], Awaitable[T]], *, wait: float,
                   shared_result: Callable[[], Any] | None = None, first: Callable[[], Any] | None = None,
                   keep: Callable[[T], Any] | None = None) -> tuple[T | Any, bool]:
        """`run` for tasks: `fn` is a coroutine function; waits never block the
        loop. The leader's work runs as a task of its own: when the leader is
        cancelled (its client went away), the work still finishes for the
        callers that wait on it.

        The leader's store work takes two hops off the loop, whatever it is:
        `first` (a cache read, with `shared_result`: `across`) rides with the
        lock's acquiring, `keep(result)` (the result's cache write) with its
        release."""
        future, leader = self.join(key)
        if not leader:
            if not future.done():
                await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), wait)
            return self.outcome(future), True
        lock = None
        try:
            if shared_result is not None:
                steps = self.across(key, wait, shared_result, first)
                # Each step's lock and cache calls run in a thread: never on the loop.
                while (step := await asyncio.to_thread(advance, steps))[0]:
                    await asyncio.sleep(step[1])
                kind, value = step[1]
                if kind == "found":
                    self.finish(key, future, result=value)
                    return value, True
                lock = value
        except BaseException as err:
            await _arelease_lock(lock)
            self.finish(key, future, error=err)
            raise
        work = asyncio.ensure_future(self._lead(key, future, fn, lock, keep))
        work.add_done_callback(_retrieve)  # a cancelled leader leaves nobody to read its error
        return await asyncio.shield(work), False

    async def _lead(self, key: str, future: Future, fn: Callable[[], Awaitable[T]], lock: Any,
                    keep: Callable[[T], Any] | None) -> T:
        try:
            result = await fn()
        except BaseException as err:
            await _arelease_lock(lock)
            self.finish(key, future, error=err)
            raise
        try:
            if keep is not None:  # the result kept, then the lock released: one hop
                await asyncio.to_thread(_keep_then_release, keep, result, lock)
            else:
                await _arelease_lock(lock)
        except BaseException as err:
            self.finish(key, future, error=err)
            raise
        self.finish(key, future, result=result)
        return result


def advance(steps: Generator[float, None, Across]) -> tuple[bool, Any]:
    """One step of `across`: (True, seconds to sleep) or (False, its outcome)."""
    try:
        return True, next(steps)
    except StopIteration as stop:
        return False, stop.value


def _keep_then_release(keep: Callable[[Any], Any], result: Any, lock: Any) -> None:
    try:
        keep(result)
    finally:
        release_lock(lock)


async def _arelease_lock(lock: Any) -> None:
    if lock is not None:  # a lock release is a Redis round trip: off the loop
        await asyncio.to_thread(release_lock, lock)


def _retrieve(task: asyncio.Future) -> None:
    if not task.cancelled():
        task.exception()
