"""Brute-force protection for API tokens: failed token checks are counted
per client address in a fixed window; past the rate, every token check from
that address answers 429 with `Retry-After` until the window ends, right or
wrong token, so guessing costs the window, not one request.

The rate is `REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]["auth_failure"]`
(`AUTH_FAILURE_THROTTLE`, default "30/min"; None turns it off), read at use
time. Counting is the cache's `incr_window` (one round trip on Redis, exact
across workers; on a cache outage each process counts in local memory), as
the generate throttle does (aigen.throttling).

The client address is `REMOTE_ADDR`: `X-Forwarded-For` is the caller's to
write, so trusting it would hand every guess a fresh bucket. Behind a reverse
proxy set `REST_FRAMEWORK["NUM_PROXIES"]`: DRF's `get_ident` then takes the
address that many proxies back from the header.
"""
from __future__ import annotations

import time
from typing import Any

from django.core.cache import cache as default_cache
from rest_framework import exceptions
from rest_framework.settings import api_settings
from rest_framework.throttling import SimpleRateThrottle


class AuthFailureThrottle(SimpleRateThrottle):
    scope = "auth_failure"
    #: Test seams, as in DRF.
    cache = default_cache
    timer = time.time

    def get_rate(self) -> str | None:
        return api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)

    def get_ident(self, request: Any) -> str:
        if api_settings.NUM_PROXIES is not None:
            return super().get_ident(request)
        return request.META.get("REMOTE_ADDR", "")

    def _window_key(self, request: Any) -> tuple[str, float]:
        now = self.timer()
        window = int(now // self.duration)
        return f"throttle:{self.scope}:{self.get_ident(request)}:{window}", (window + 1) * self.duration - now

    def check(self, request: Any) -> None:
        """Raise `Throttled` when this address used up its failures for the window."""
        if self.rate is None:
            return
        key, wait = self._window_key(request)
        if int(self.cache.get(key) or 0) >= self.num_requests:
            raise exceptions.Throttled(wait=max(wait, 0.0))

    def record_failure(self, request: Any) -> None:
        if self.rate is None:
            return
        key, _ = self._window_key(request)
        window = getattr(self.cache, "incr_window", None)
        if window is not None:
            window(key, self.duration + 1)
        elif not self.cache.add(key, 1, timeout=self.duration + 1):
            self.cache.incr(key)
