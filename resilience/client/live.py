"""Live policy: what is built from an upstream's row, and rebuilding it when
the row changes.

A saved policy bumps a version key in the shared cache (`policy_changed`,
from a post_save receiver); each process compares at most every
`POLICY_CHECK_INTERVAL` seconds. When the cache is not shared (local memory,
or Redis fallen back), the comparison asks the database instead, so an edit
made in another process is still seen. A rebuild closes the old session and
pools (no sockets leak per admin edit).

Database reads are sync: async callers use `due()` to learn whether a check
is needed and run `current()` in a thread then (resilience.client.core).
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import requests

from resilience import exceptions as errors
from resilience.cache import cache_is_shared, default_cache
from resilience.client.ahead import Ahead
from resilience.client.asend import AsyncPool
from resilience.client.breaker import SharedBreaker, Transition, log_transition
from resilience.client.bulkhead import Bulkhead
from resilience.client.credentials import Credentials
from resilience.client.db import given_back
from resilience.client.endpoints import Pool, pool_specs
from resilience.client.policy import Policy
from resilience.conf import resilience_settings
from resilience.models import Upstream
from resilience.signals import breaker_state_changed

logger = logging.getLogger(__name__)


def version_key(name: str) -> str:
    return f"policy:{name}:version"


def policy_changed(name: str) -> None:
    """Tell every worker that upstream `name`'s policy changed (post_save hook)."""
    default_cache().set(version_key(name), uuid.uuid4().hex, timeout=None)


def _announce(change: Transition) -> None:
    """Breaker listener: one log line, then the signal (metrics, the event record)."""
    log_transition(change)
    breaker_state_changed.send(sender=SharedBreaker, upstream=change.upstream, old=change.old,
                               new=change.new, reason=change.reason)


@dataclass(slots=True)
class Built:
    """Everything built from one policy version: the endpoint pool (one
    session, async pool, credential and breaker per endpoint), the bulkhead.
    `session`, `apool`, `breaker` and `credentials` are the first endpoint's
    (a single-URL upstream's only one)."""

    policy: Policy
    pool: Pool
    bulkhead: Bulkhead | None
    version: Any
    updated_at: Any

    @classmethod
    def of(cls, row: Upstream, version: Any) -> Built:
        policy = Policy.from_model(row)

        def breaker_for(name: str) -> SharedBreaker | None:
            if not policy.breaker_enabled:
                return None
            return SharedBreaker(
                name, fail_max=policy.breaker_fail_max, reset_timeout=policy.breaker_reset_timeout,
                probe_interval=policy.breaker_probe_interval,
                success_threshold=policy.breaker_success_threshold,
                half_open_max=policy.breaker_half_open_max, probe_ttl=policy.deadline + 1,
                listeners=[_announce])

        return cls(policy=policy, pool=Pool(policy, pool_specs(row), breaker_for),
                   bulkhead=Bulkhead(policy.bulkhead_max) if policy.bulkhead_max else None,
                   version=version, updated_at=row.updated_at)

    @property
    def session(self) -> requests.Session:
        return self.pool.first.session

    @property
    def apool(self) -> AsyncPool:
        return self.pool.first.apool

    @property
    def breaker(self) -> SharedBreaker | None:
        return self.pool.first.breaker

    @property
    def credentials(self) -> Credentials:
        return self.pool.first.credentials

    def credentials_now(self) -> Credentials:
        """The first endpoint's credential, read again while it is still missing."""
        return self.pool.first.credentials_now()

    def close(self) -> None:
        self.pool.close()


class LivePolicy:
    """The current `Built` of one upstream, rebuilt when its row changes."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._built: Built | None = None
        self._checked_at = 0.0
        self._ahead = Ahead(f"upstream {name}'s policy")
        self.on_reload: list[Any] = []

    def _load(self) -> Built:
        version = default_cache().get(version_key(self.name))
        try:
            row = Upstream.objects.get(name=self.name)
        except Upstream.DoesNotExist:
            raise errors.UnknownUpstream(f"no upstream named {self.name!r}", upstream=self.name) from None
        return Built.of(row, version)

    def due(self) -> bool:
        """Whether `current()` would check (or load) now."""
        return self._built is None or \
            time.monotonic() - self._checked_at >= resilience_settings.POLICY_CHECK_INTERVAL

    def read_ahead(self) -> None:
        """Check the loaded policy in a thread when it is in the last quarter of its interval
        (resilience.client.ahead: on the event loop), so the loop's calls find it checked instead
        of waiting for the check."""
        if self._built is not None and self._ahead.soon(time.monotonic() - self._checked_at,
                                                        resilience_settings.POLICY_CHECK_INTERVAL):
            self._ahead.start(given_back(lambda: self._check(force=True)))

    def loaded(self) -> Built:
        """The policy as last loaded, without a check (no database or cache
        read once a call has loaded it: usable on the event loop)."""
        built = self._built
        return built if built is not None else self.current()

    def current(self) -> Built:
        built = self._built
        if built is not None and not self.due():
            return built
        return self._check(force=False)

    def _check(self, *, force: bool) -> Built:
        """Load the policy, or compare its version and reload it when it moved (when due, or
        `force`: a check ahead)."""
        with self._lock:
            built = self._built
            now = time.monotonic()
            if built is None:
                built = self._built = self._load()
                self._checked_at = now
                return built
            if not force and now - self._checked_at < resilience_settings.POLICY_CHECK_INTERVAL:
                return built
            self._checked_at = now
            store = default_cache()
            if cache_is_shared(store):
                changed = store.get(version_key(self.name)) != built.version
            else:
                # Version bumps made elsewhere may not be here: ask the database.
                stamp = Upstream.objects.filter(name=self.name).values_list("updated_at", flat=True).first()
                changed = stamp != built.updated_at
            if changed:
                self._built = self._load()
                built.close()
                for callback in self.on_reload:
                    callback()
                logger.info("upstream %s: policy reloaded", self.name)
            return self._built

    def close(self) -> None:
        with self._lock:
            if self._built is not None:
                self._built.close()
                self._built = None
