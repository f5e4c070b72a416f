"""Views that are slow by design: the registry the request-timing middleware
reads before it calls a request "slow".

A view that waits on a provider for seconds (AI generation, /v1 completions)
is declared with `@slow_expected` where it is defined; the decorator records
the view in a set and returns it unchanged (nothing is stuck onto the function).
`slow_expected_is(view)` answers for a resolved view. `slow_expected_reset()`
empties the registry (tests).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

View = TypeVar("View", bound=Callable)

_slow_views: set[Callable] = set()


def slow_expected(view: View) -> View:
    """Declare `view` slow by design; returns it unchanged."""
    _slow_views.add(view)
    return view


def slow_expected_is(view: Callable | None) -> bool:
    """Whether `view` was declared with `@slow_expected`."""
    return view is not None and view in _slow_views


def slow_expected_reset() -> None:
    _slow_views.clear()
