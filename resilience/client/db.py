"""Short database reads made for a request that then waits.

Under ASGI a request's synchronous work runs in a thread of the request's own,
and a connection that thread opens stays with it until the request ends. With
PostgreSQL's connection pool (`DB_POOL`, as `make serve` runs), a request that
reads a row and then waits (in an endpoint's admission queue, on a slow
provider, through a stream) would hold one of the pool's few connections all
that time: 220 callers waiting over a pool of 10 per worker starved every other
request (`PoolTimeout` after `DB_POOL_TIMEOUT`, answered 500).

    models = await sync_to_async(given_back(load_models))()

`given_back(fn)` runs `fn` and then gives the thread's pooled connection back
to the pool (outside a transaction only). Without a pool nothing changes: an
SQLite or unpooled connection is the request thread's, closed as before at the
request's end.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from django.db import connections

P = ParamSpec("P")
R = TypeVar("R")


def give_back() -> None:
    """This thread's pooled connections back to their pools (those not in a transaction)."""
    for connection in connections.all(initialized_only=True):
        if connection.connection is not None and not connection.in_atomic_block \
                and getattr(connection, "pool", None) is not None:
            connection.close()


def given_back(fn: Callable[P, R]) -> Callable[P, R]:
    """`fn`, then `give_back()` (see the module docstring)."""
    @functools.wraps(fn)
    def read(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        finally:
            give_back()
    return read
