"""The per-user throttle on generate: a fixed-window counter in the cache.

DRF's `UserRateThrottle` keeps a list of request times per user, read and
rewritten on every request: its cost grows with the rate, and two workers
updating it at once lose each other's entries. Here each user has one counter
per window (`throttle:generate:<user>:<window>`), bumped with the cache's
`incr_window` (INCR and EXPIRE NX pipelined while Redis serves, no script):
one round trip, exact across workers. The price is the usual fixed-window burst: up to twice the rate
across a window boundary.

The rate is `REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]["generate"]` (e.g.
"60/min"), read when the throttle is built, so `override_settings` works.
On a cache outage the fallback cache counts in local memory (per process).

A caller with limits of its own (aigen.generation.quotas) has its window
counted by its admission script instead (`window`): same key, same count, one
round trip for both.
"""
from __future__ import annotations

import time
from typing import Any

from django.core.cache import cache as default_cache
from rest_framework.settings import api_settings
from rest_framework.throttling import SimpleRateThrottle

from aigen.generation.quotas import ThrottleWindow


class GenerateThrottle(SimpleRateThrottle):
    scope = "generate"
    #: Test seams, as in DRF.
    cache = default_cache
    timer = time.time

    def get_rate(self) -> str | None:
        return api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)

    def get_cache_key(self, request: Any, view: Any) -> str | None:
        user = getattr(request, "user", None)
        ident = user.pk if user is not None and user.is_authenticated else self.get_ident(request)
        return f"throttle:{self.scope}:{ident}"

    def window(self, request: Any) -> ThrottleWindow | None:
        """This request's window (None: no rate), for a caller whose admission
        script counts it (aigen.generation.quotas) instead of `allow_request`."""
        if self.rate is None:
            return None
        base = self.get_cache_key(request, None)
        if base is None:
            return None
        now = self.timer()
        window = int(now // self.duration)
        self._wait = (window + 1) * self.duration - now
        return ThrottleWindow(f"{base}:{window}", self.num_requests, self.duration + 1, self._wait)

    def allow_request(self, request: Any, view: Any) -> bool:
        window = self.window(request)
        if window is None:
            return True
        return self._count(window.key) <= window.limit

    def _count(self, key: str) -> int:
        window = getattr(self.cache, "incr_window", None)
        if window is not None:  # the project's cache: one round trip
            return window(key, self.duration + 1)
        try:
            return self.cache.incr(key)
        except ValueError:  # first request of the window
            if self.cache.add(key, 1, timeout=self.duration + 1):
                return 1
            return self.cache.incr(key)  # another request created it meanwhile

    def wait(self) -> float:
        return max(getattr(self, "_wait", 0.0), 0.0)
