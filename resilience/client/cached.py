"""The cache step of the resilient client: the response cache and single-flight in front of the attempts.

`CachedSteps.run` answers a cacheable call from the cache when a fresh copy is there (the near cache of
this process first when the store is shared), else lets one caller per key fetch (single-flight within
the process, and across processes through a lock on a shared store) while the others wait for its
data. A failed fetch hands the waiting callers the same failure, each as an error of its own; a fetch
abandoned mid-way (the caller went away) fails its followers rather than leaving them waiting. Used by
resilience.client.core only.
"""
from __future__ import annotations

from collections.abc import Generator
from concurrent.futures import Future
from functools import partial
from typing import Any

from resilience import exceptions as errors
from resilience.cache import cache_is_shared, default_cache
from resilience.client import responses
from resilience.client.attempt import Attempts
from resilience.client.flight import SingleFlight, advance, copy_error, release_lock
from resilience.client.live import Built
from resilience.client.record import Result
from resilience.client.responses import CacheEntry, CallMeta, NearCache
from resilience.client.spec import RequestSpec
from resilience.client.steps import (
    Answer,
    Command,
    Follow,
    FromEntry,
    OnStore,
    Shared,
    Sleep,
    Steps,
    http_failure,
    outcome_of,
    retry_after_of,
)
from resilience.client.wires import WireBridge
from resilience.conf import resilience_settings
from resilience.models import Outcome


def _fresh(found: Any) -> CacheEntry | None:
    return found if isinstance(found, CacheEntry) and found.fresh() else None


class CachedSteps:
    """The cache step for one upstream: its in-process flights and near cache, in front of `attempts`."""

    def __init__(self, name: str, *, attempts: Attempts, flight: SingleFlight, near: NearCache) -> None:
        self.name = name
        self.attempts = attempts
        self.flight = flight
        self.near = near

    def run(self, built: Built, spec: RequestSpec, from_entry: FromEntry, *,
            wire: WireBridge | None = None) -> Steps:
        """The call from the cache when fresh, else fetched once for every caller of the same key.
        The key is the call in its own wire format (`wire`: the bridge's `vary` headers join the
        policy's), whichever endpoint and format answers it."""
        policy = built.policy
        vary = policy.cache_vary_headers + tuple(h for h in (wire.vary if wire is not None else ())
                                                 if h not in policy.cache_vary_headers)
        key = spec.cache_key(self.name, vary)
        store = default_cache()
        shared_store = cache_is_shared(store)
        entry, fresh = yield from self._lookup(key, store, shared_store)
        if fresh:
            return Answer(Result(Outcome.CACHE_HIT, status=entry.status, cache_hit=True),
                          response=from_entry(entry, spec, CallMeta(from_cache=True)))
        stale = entry if policy.cache_serve_stale else None

        if not policy.single_flight:
            answer = yield from self.attempts.fetch(built, spec, from_entry, stream=False, stale=stale,
                                                    wire=wire)
            yield from self._store(key, answer, policy)
            return answer

        future, leader = self.flight.join(key)
        if not leader:
            return (yield from self._follower(future, policy.deadline, spec, from_entry))
        return (yield from self._leader(key, future, built, spec, from_entry, stale=stale,
                                        shared_store=shared_store, wire=wire))

    def _lookup(self, key: str, store: Any,
                shared_store: bool) -> Generator[Command, Any, tuple[CacheEntry | None, bool]]:
        """The cached entry for `key` (or None) and whether it is fresh: the near cache first when the
        store is shared (a hit there makes no round trip), and a fresh entry is kept near (for at most
        its own freshness). The shared store's read is an `OnStore` command."""
        near_seconds = resilience_settings.HTTP_CACHE_NEAR_SECONDS if shared_store else 0
        found = self.near.get(key) if near_seconds else None
        if found is None:
            found = (yield OnStore(lambda: store.get(key))) if shared_store else store.get(key)
        entry = found if isinstance(found, CacheEntry) else None
        now = responses.wall_clock()
        fresh = entry is not None and entry.fresh(now)
        if fresh and near_seconds:
            self.near.put(key, entry, min(near_seconds, entry.expires - now))
        return entry, fresh

    def _follower(self, future: Future, deadline: float, spec: RequestSpec, from_entry: FromEntry) -> Steps:
        """A caller that waits for the flight of its key (up to the deadline) and answers from its data."""
        try:
            yield Follow(future, deadline)
        except TimeoutError:
            failure = errors.UpstreamTimeout(f"{self.name}: deadline passed waiting for a shared call",
                                             upstream=self.name)
            return Answer(Result(Outcome.TIMEOUT, error=failure.message), error=failure)
        try:
            shared = SingleFlight.outcome(future)
        except errors.UpstreamError as err:
            return Answer(Result(outcome_of(err), error=err.message), error=err)
        return self._follow(shared, spec, from_entry)

    def _leader(self, key: str, future: Future, built: Built, spec: RequestSpec, from_entry: FromEntry, *,
                stale: CacheEntry | None, shared_store: bool, wire: WireBridge | None = None) -> Steps:
        """The caller that fetches for its key: after another process's flight when one holds the key's
        lock (its stored copy answers), and always finishing the flight, whatever happens."""
        policy = built.policy
        lock = None
        try:
            if shared_store:
                kind, value = yield from self._across(key, policy.deadline)
                if kind == "found":
                    shared = Shared(Result(Outcome.SHARED, status=value.status, cache_hit=True), value)
                    self.flight.finish(key, future, result=shared)
                    return self._follow(shared, spec, from_entry)
                lock = value
            answer = yield from self.attempts.fetch(built, spec, from_entry, stream=False, stale=stale,
                                                    wire=wire)
            yield from self._store(key, answer, policy)
            if lock is not None:  # released before the flight ends, as an `OnStore` command
                yield OnStore(partial(release_lock, lock))
                lock = None
        except GeneratorExit:
            self.flight.finish(key, future, error=errors.UpstreamError(
                f"{self.name}: the call this one waited for was abandoned", upstream=self.name))
            raise
        except BaseException as err:
            self.flight.finish(key, future, error=err)
            raise
        finally:
            release_lock(lock)
        self.flight.finish(key, future, result=self._shareable(answer, policy))
        return answer

    @staticmethod
    def _across(key: str, deadline: float) -> Steps:
        """Single-flight across processes: ("found", entry) when another process stored the key while
        this one waited, else ("lead", the key's lock or None); each wait is a `Sleep` command."""
        across = SingleFlight.across(key, deadline, lambda: _fresh(default_cache().get(key)))
        while True:
            more, value = yield OnStore(lambda: advance(across))  # each step a lock or cache call
            if not more:
                return value
            yield Sleep(value)

    def _shareable(self, answer: Answer, policy: Any) -> Shared:
        response = answer.response
        if response is None:  # failed, with no stale copy to answer
            return Shared(answer.result, None, error=answer.error)
        entry = response.to_entry(policy.cache_ttl)
        return Shared(answer.result, entry, stale=response.stale,
                      retried=isinstance(answer.http_error, errors.RetriesExhausted))

    def _follow(self, shared: Shared, spec: RequestSpec, from_entry: FromEntry) -> Answer:
        """A waiting caller's own answer from the flight's data."""
        entry = shared.entry
        if entry is None:  # the leader failed: the same failure, as an error of this caller's own
            error = copy_error(shared.error) if shared.error is not None else errors.UpstreamError(
                f"{self.name}: the shared call failed", upstream=self.name)
            return Answer(Result(shared.result.outcome, breaker_state=shared.result.breaker_state,
                                 error=shared.result.error), error=error)  # type: ignore[arg-type]
        response = from_entry(entry, spec, CallMeta(from_cache=True, stale=shared.stale, shared=True))
        outcome = Outcome.STALE if shared.stale else Outcome.SHARED
        result = Result(outcome, status=entry.status, cache_hit=True, error=shared.result.error)
        http_error = None
        if entry.status >= 400:
            http_error = http_failure(self.name, entry.status, response, retried=shared.retried,
                                      attempts=shared.result.attempts,
                                      retry_after=retry_after_of(response.headers))
        return Answer(result, response=response, http_error=http_error)

    @staticmethod
    def _store(key: str, answer: Answer, policy: Any) -> Generator[Command, Any, None]:
        """Keep a fresh success (on a shared store, as an `OnStore` command)."""
        response = answer.response
        if response is None or response.stale or not 200 <= response.status_code < 300:
            return
        keep = policy.cache_ttl + (policy.cache_stale_max_age if policy.cache_serve_stale else 0)
        store, entry = default_cache(), response.to_entry(policy.cache_ttl)
        if cache_is_shared(store):
            yield OnStore(lambda: store.set(key, entry, timeout=keep))
        else:
            store.set(key, entry, timeout=keep)
