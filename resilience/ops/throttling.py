"""Brute-force protection for API tokens: failed token checks are counted
per client address in a fixed window; past the rate, a failed check from
that address answers 429 with `Retry-After` until the window ends instead of
401. A valid token is never refused here: only failures meet the throttle
(aigen.edge.auth), so one client guessing behind a shared address (a NAT, an
office, the proxy itself) does not lock out the valid tokens behind it.

The rate is `REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]["auth_failure"]`
(`AUTH_FAILURE_THROTTLE`, default "30/min"; None turns it off), read at use
time. Counting is the cache's `incr_window` (one round trip on Redis, exact
across workers; on a cache outage each process counts in local memory), as
the generate throttle does (aigen.edge.throttling).

The client address (`client_address`) is `REMOTE_ADDR`: `X-Forwarded-For`
is the caller's to write, so trusting it would hand every guess a fresh
bucket. Only a request from a configured proxy (`RESILIENCE["TRUSTED_PROXIES"]`,
the `TRUSTED_PROXIES` variable, addresses or networks) is read further: its
client is the last address in the header that is not itself a trusted proxy.
gunicorn.conf.py hands uvicorn the same list (`forwarded_allow_ips`), which
otherwise believes the header from any loopback peer.
"""
from __future__ import annotations

import ipaddress
import time
from functools import lru_cache
from typing import Any

from django.core.cache import cache as default_cache
from rest_framework import exceptions
from rest_framework.settings import api_settings
from rest_framework.throttling import SimpleRateThrottle

from resilience.conf import resilience_settings

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=8)
def _networks(proxies: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(p.strip(), strict=False) for p in proxies if p.strip())


def _trusted(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        return False
    return any(ip in network for network in networks)


def client_address(request: Any) -> str:
    """The client's address: `REMOTE_ADDR`, or, when that is a trusted proxy,
    the last `X-Forwarded-For` entry that is not one."""
    remote = request.META.get("REMOTE_ADDR", "")
    networks = _networks(tuple(resilience_settings.TRUSTED_PROXIES))
    if not networks or not _trusted(remote, networks):
        return remote
    hops = [hop.strip() for hop in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, networks):
            return hop
    return hops[0] if hops else remote


class AuthFailureThrottle(SimpleRateThrottle):
    scope = "auth_failure"
    #: Test seams, as in DRF.
    cache = default_cache
    timer = time.time

    def get_rate(self) -> str | None:
        return api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)

    def get_ident(self, request: Any) -> str:
        return client_address(request)

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
