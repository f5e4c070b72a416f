"""A whole Redis reply within the socket timeout, not each read.

redis-py applies `socket_timeout` to every `recv`: a Redis (or a link) that
trickles a large reply a few bytes at a time never trips it, and one cache
read could take minutes (measured by the acceptance suite: a 200 kB value
at 2 kB/s took 101 s with a 0.25 s timeout). `DeadlineHiredisParser` gives
each reply a deadline of one `socket_timeout` from when reading starts; every
`recv` waits at most what is left. Past it, redis-py's own `TimeoutError` is
raised and the connection dropped, which the cache engine treats as an outage
(fallback to local memory). Used through django-redis's
`CONNECTION_POOL_KWARGS` by the cache engine (resilience.cache.engine).

Commands with a timeout of their own (blocking pops, a lock's blocking wait)
pass `timeout=` to the parser and keep it: only the default read is bounded.

Cost: a read with `SLACK` or less of the reply's time gone (every reply
that comes in one `recv`, nearly all of a cache's) waits on the socket's own
timeout, as redis-py's parser does: passing a timeout costs two
`settimeout` calls (a system call each) per read, and would shorten the
wait by microseconds. So a reply may end up to `SLACK` past its deadline.
"""
from __future__ import annotations

import time
from typing import Any

from redis._parsers.hiredis import _HiredisParser
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.utils import HIREDIS_AVAILABLE, SENTINEL

#: Seconds of a reply's deadline a read may overrun instead of setting its own timeout.
SLACK = 0.001


class DeadlineHiredisParser(_HiredisParser):
    _deadline: float | None = None

    def read_response(self, *args: Any, timeout: Any = SENTINEL, **kwargs: Any) -> Any:
        if timeout is not SENTINEL:
            return super().read_response(*args, timeout=timeout, **kwargs)
        outer = self._deadline is None
        if outer and self._socket_timeout:
            self._deadline = time.monotonic() + float(self._socket_timeout)
        try:
            return super().read_response(*args, **kwargs)
        finally:
            if outer:
                self._deadline = None

    def read_from_socket(self, timeout: Any = SENTINEL, raise_on_timeout: bool = True) -> Any:
        deadline = self._deadline
        if timeout is SENTINEL and deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RedisTimeoutError("Timeout reading from socket (reply deadline)")
            if left < float(self._socket_timeout) - SLACK:  # else the socket's own timeout is as good
                timeout = left
        if timeout is SENTINEL:
            return super().read_from_socket(raise_on_timeout=raise_on_timeout)
        return super().read_from_socket(timeout=timeout, raise_on_timeout=raise_on_timeout)


def pool_kwargs() -> dict[str, Any]:
    """django-redis CONNECTION_POOL_KWARGS for a reply deadline (none without hiredis)."""
    return {"parser_class": DeadlineHiredisParser} if HIREDIS_AVAILABLE else {}
