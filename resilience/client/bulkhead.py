"""The bulkhead: at most `limit` calls in flight to one upstream per process.

Threads (the sync face) and event-loop tasks (the async face) share one
count. A call beyond the limit queues, first come first served, for at most
its wait; then it fails fast (`BulkheadFull`, 503 with Retry-After) instead
of piling up threads, sockets and memory behind a slow upstream. A freed slot
is handed straight to the oldest waiter, so a newcomer cannot overtake the
queue. Nothing here counts against the breaker: a full bulkhead is local.
"""
from __future__ import annotations

import asyncio
import threading
from collections import deque
from dataclasses import dataclass, field


@dataclass(eq=False)
class _Waiter:
    """One queued call: a thread's event, or a task's future on its loop."""

    event: threading.Event | None = None
    loop: asyncio.AbstractEventLoop | None = None
    future: asyncio.Future | None = None
    granted: bool = field(default=False)

    def wake(self) -> None:
        if self.event is not None:
            self.event.set()
        elif self.loop is not None and self.future is not None:
            self.loop.call_soon_threadsafe(_resolve, self.future)


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(True)


class Bulkhead:
    """A counting limit with a FIFO queue, usable from threads and tasks."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._in_flight = 0
        self._queue: deque[_Waiter] = deque()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def _try(self) -> bool:
        # Caller holds the lock. Queued calls come first.
        if self._in_flight < self.limit and not self._queue:
            self._in_flight += 1
            return True
        return False

    def acquire(self, timeout: float) -> bool:
        """Take a slot, waiting up to `timeout` seconds (a thread)."""
        with self._lock:
            if self._try():
                return True
            if timeout <= 0:
                return False
            waiter = _Waiter(event=threading.Event())
            self._queue.append(waiter)
        waiter.event.wait(timeout)
        return self._settle(waiter)

    async def aacquire(self, timeout: float) -> bool:
        """Take a slot, waiting up to `timeout` seconds (a task)."""
        with self._lock:
            if self._try():
                return True
            if timeout <= 0:
                return False
            loop = asyncio.get_running_loop()
            waiter = _Waiter(loop=loop, future=loop.create_future())
            self._queue.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter.future), timeout)
        except TimeoutError:
            pass
        except asyncio.CancelledError:
            if not self._settle(waiter):
                raise
            self.release()  # granted as we were cancelled: give it back
            raise
        return self._settle(waiter)

    def _settle(self, waiter: _Waiter) -> bool:
        """Whether the waiter got its slot; a waiter that timed out leaves the queue."""
        with self._lock:
            if waiter.granted:
                return True
            try:
                self._queue.remove(waiter)
            except ValueError:
                pass
            return False

    def release(self) -> None:
        """Free a slot: hand it to the oldest waiter, or count it back."""
        with self._lock:
            if self._queue:
                waiter = self._queue.popleft()
                waiter.granted = True  # the slot passes on; in_flight is unchanged
            else:
                self._in_flight -= 1
                return
        waiter.wake()
