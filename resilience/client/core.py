"""The resilient client: one logic of steps, two faces (sync and async).

`UpstreamClient._steps` is the whole logic of a call as a generator: the
response cache, single-flight, the endpoint and its breaker, the bulkhead,
sending, error classification, failover to another endpoint and the stale
fallback. Where it needs I/O it yields a
command (`Send`, `Sleep`, `Follow`, `Acquire`); `request()` performs them
with requests and threads, `arequest()` with httpx2 and the event loop, and
both send the outcome back in. Everything else (what to cache, what counts
against the breaker, what is logged) is decided once, here.

A call ends as an `Answer`: a `Result` (what the call-log row says), the
caller's response, and the error to raise. The record is built from it in
one place (resilience.client.record).

Under ASGI the sync face must not run on the event loop (it blocks while it
waits on the network): from async code use `aget()`/`arequest()`, or
`asgiref.sync.sync_to_async(upstream(name).get)`. The async face reads the
cache and the breaker's shared state on the loop (sub-millisecond Redis
commands bounded by the cache's 0.25 s socket timeout) and loads the policy
from the database in a worker thread when a check is due.
"""
from __future__ import annotations

import asyncio
import json as json_module
import logging
import time
from collections.abc import Callable, Generator
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any

import httpx2
import requests
from asgiref.sync import sync_to_async
from requests.structures import CaseInsensitiveDict

from resilience import exceptions as errors
from resilience.cache import default_cache
from resilience.client import responses
from resilience.client.asend import asend, build_request
from resilience.client.breaker import SharedBreaker
from resilience.client.bulkhead import Bulkhead
from resilience.client.credentials import Credentials
from resilience.client.endpoints import Choice, Member, Pool, Unavailable
from resilience.client.failures import (
    CONTENT_POLICY,
    CONTEXT_LENGTH,
    classify,
    nothing_sent,
    unfixable_answer,
)
from resilience.client.flight import SingleFlight, copy_error, release_lock
from resilience.client.live import Built, LivePolicy, cache_is_shared
from resilience.client.openai_wire import OPENAI_CHAT
from resilience.client.policy import Discipline, Policy, Trace
from resilience.client.record import CallRecord, Result, call_record_emit
from resilience.client.responses import (
    AsyncUpstreamResponse,
    CacheEntry,
    CallMeta,
    NearCache,
    UpstreamResponse,
)
from resilience.client.send import send
from resilience.client.spec import RequestSpec
from resilience.client.stream import SupervisedStream, WireCodec
from resilience.client.urls import join_url, redact_path
from resilience.conf import resilience_settings
from resilience.context import current_caller, current_request_id
from resilience.models import Outcome

logger = logging.getLogger(__name__)


# -- commands the steps yield ----------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Send:
    member: Member
    spec: RequestSpec
    credentials: Credentials
    trace: Trace
    stream: bool


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


@dataclass(frozen=True, slots=True)
class Follow:
    """Wait (up to `timeout`) for another caller's flight to finish."""

    future: Future
    timeout: float


@dataclass(frozen=True, slots=True)
class Acquire:
    bulkhead: Bulkhead
    timeout: float


@dataclass(frozen=True, slots=True)
class Blocking:
    """Run `work` (database, token server): in the caller's thread on the
    sync face, in a worker thread on the async one (never on the loop)."""

    work: Callable[[], Any]


Command = Send | Sleep | Follow | Acquire | Blocking
Steps = Generator[Command, Any, "Answer"]
#: Builds the face's response from a cache entry.
FromEntry = Callable[[CacheEntry, RequestSpec, CallMeta], Any]


@dataclass(frozen=True, slots=True)
class Answer:
    """How a call ended: `error` is raised always, `http_error` (an error
    status) only when the caller asked for `raise_for_status`."""

    result: Result
    response: Any = None
    error: errors.UpstreamError | None = None
    http_error: errors.UpstreamError | None = None

    def unwrap(self, raise_for_status: bool) -> Any:
        if self.error is not None:
            raise self.error from None
        if self.http_error is not None and raise_for_status:
            raise self.http_error from None
        return self.response


@dataclass(frozen=True, slots=True)
class Plan:
    """A checked call: its steps to run, or the answer refusing it."""

    method: str
    path: str
    spec: RequestSpec | None
    steps: Steps | None = None
    refusal: Answer | None = None


@dataclass(frozen=True, slots=True)
class Shared:
    """What a flight hands to the callers that waited: data, never the
    leader's response object."""

    result: Result
    entry: CacheEntry | None
    stale: bool = False
    retried: bool = False
    error: errors.UpstreamError | None = None


def http_failure(name: str, status: int, response: Any, *, retried: bool, attempts: int,
                 retry_after: float | None) -> errors.UpstreamError:
    if retried:
        return errors.RetriesExhausted(f"{name}: still {status} after {attempts} attempts", upstream=name,
                                       last_status=status, response=response, retry_after=retry_after)
    return errors.UpstreamHTTPError(f"{name} answered {status}", upstream=name, response=response)


def retry_after_of(headers: Any) -> float | None:
    value = headers.get("Retry-After", "")
    return float(value) if value.strip().isdigit() else None


def outcome_of(err: errors.UpstreamError) -> Outcome:
    if isinstance(err, errors.BreakerOpen):
        return Outcome.BREAKER_OPEN
    if isinstance(err, errors.LocalCapacityExhausted):
        return Outcome.REJECTED
    if isinstance(err, errors.UpstreamTimeout):
        return Outcome.TIMEOUT
    if isinstance(err, (errors.UpstreamConnectionError, errors.RetriesExhausted)):
        return Outcome.CONNECTION_ERROR
    return Outcome.REFUSED


def _light_request(spec: RequestSpec) -> requests.PreparedRequest:
    """A PreparedRequest for responses that never went out (cache, stale)."""
    prepared = requests.PreparedRequest()
    prepared.method = spec.method
    prepared.url = spec.full_url()
    prepared.headers = CaseInsensitiveDict(spec.headers)
    return prepared


def sync_from_entry(entry: CacheEntry, spec: RequestSpec, meta: CallMeta) -> UpstreamResponse:
    return UpstreamResponse.from_entry(entry, _light_request(spec), meta)


def async_from_entry(entry: CacheEntry, spec: RequestSpec, meta: CallMeta) -> AsyncUpstreamResponse:
    return AsyncUpstreamResponse.from_entry(entry, httpx2.Request(spec.method, spec.full_url()), meta)


def _json_body(spec: RequestSpec) -> dict[str, Any] | None:
    """The call's JSON object body (given as `json`, or as JSON bytes/text), or None."""
    if isinstance(spec.json, dict):
        return spec.json
    data = spec.data
    if spec.json is None and isinstance(data, (bytes, str)) and data[:1] in (b"{", "{"):
        try:
            decoded = json_module.loads(data)
        except ValueError:
            return None
        return decoded if isinstance(decoded, dict) else None
    return None


def names_model(spec: RequestSpec) -> bool:
    """Whether the call's JSON body names a "model" (a model fallback can replace)."""
    body = _json_body(spec)
    return body is not None and "model" in body


def spec_for(member: Member, spec: RequestSpec, policy: Any, *, model: str = "") -> RequestSpec:
    """The call as sent to `member`: its base URL in place of the policy's,
    and in a JSON body's "model" the call's fallback `model` when there is
    one, else the endpoint's model override when it has one."""
    model = model or member.model
    if member.base_url == policy.base_url and not model:
        return spec
    url = spec.url
    if member.base_url != policy.base_url and url.startswith(policy.base_url):
        url = member.base_url + url[len(policy.base_url):]  # the checked suffix, on another base
    data, body = spec.data, spec.json
    decoded = _json_body(spec) if model else None
    if decoded is not None and "model" in decoded:
        if isinstance(body, dict):
            body = {**body, "model": model}
        else:
            data = json_module.dumps({**decoded, "model": model}, separators=(",", ":")).encode()
    return RequestSpec(spec.method, url, spec.params, spec.headers, data, body)


@dataclass(slots=True)
class Attempt:
    """One call's attempts: the call as the caller made it, the endpoint of
    the next attempt and what the earlier ones taught (endpoints tried, the
    silent ones, a fallback model). Belongs to one call; never shared."""

    spec: RequestSpec
    from_entry: FromEntry
    stale: CacheEntry | None
    stream: bool
    choice: Choice
    trace: Trace
    model: str = ""
    tried: tuple[Member, ...] = ()
    silent: frozenset[Member] = frozenset()
    release: Callable[[], None] | None = None
    began: float = 0.0
    sent_at: float = 0.0

    @property
    def member(self) -> Member:
        return self.choice.member

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.began) * 1000

    def next_choice(self, pool: Pool) -> Choice | Unavailable:
        """Where a failed attempt moves: not yet tried first, a silent
        endpoint last, never one that had its burst of attempts."""
        spent = frozenset(m for m in pool.members if self.trace.burst_spent(m.name))
        return pool.choose(self.tried, avoid=self.silent, exclude=spent)


def _release_probe(choice: Choice) -> None:
    admission, breaker = choice.admission, choice.member.breaker
    if admission is not None and admission.probe and breaker is not None:
        breaker.storage.release_probe()


def _on_close(member: Member, release: Callable[[], None] | None) -> Callable[[], None]:
    def closed() -> None:
        member.in_flight -= 1
        if release is not None:
            release()
    return closed


def _settle_stream(response: Any, member: Member, admission: Any, pool: Pool,
                   began: float) -> Callable[[], None]:
    """A streamed answer's verdict, given when it closes: a failure of its
    endpoint when the reader saw it break (`stream_failure`), else a success."""
    def settled() -> None:
        failure = response.stream_failure
        if admission is not None:
            if failure is None:
                member.breaker.record_success(admission)
            else:
                member.breaker.record_failure(admission, failure)
        pool.observe(member, ok=failure is None, latency_ms=(time.perf_counter() - began) * 1000)
    return settled


def _first_choice(pool: Pool, *, avoid: str, only: str) -> Choice | Unavailable:
    """The first attempt's endpoint: `only` that one when named, else one
    other than `avoid` when another is available, else any."""
    if only:
        pinned = [m for m in pool.members if m.name == only]
        if pinned:
            return pool.choose(tuple(m for m in pool.members if m is not pinned[0]))
    if avoid and not pool.single:
        avoided = tuple(m for m in pool.members if m.name == avoid)
        if avoided:
            choice = pool.choose(avoided)
            if isinstance(choice, Choice) and not choice.forced:
                return choice
    return pool.choose()


def _fresh(found: Any) -> CacheEntry | None:
    return found if isinstance(found, CacheEntry) and found.fresh() else None


class UpstreamClient:
    """Process-wide client for one upstream (thread- and task-safe). Get it
    with `resilience.upstream(name)`; never construct one per call."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._live = LivePolicy(name)
        self._flight = SingleFlight()
        self.near = NearCache()
        # A new TTL or cache policy applies from the reload on.
        self._live.on_reload.append(self.near.clear)

    # -- state ------------------------------------------------------------------------------
    def load(self) -> None:
        """Load the policy now (raises UnknownUpstream)."""
        self._live.current()

    @property
    def policy(self):
        return self._live.current().policy

    @property
    def breaker(self):
        return self._live.current().breaker

    def breakers(self) -> dict[str, SharedBreaker]:
        """The breakers of the enabled endpoints as this process built them
        (with their listeners), by endpoint name ("" for a single URL)."""
        return {m.name: m.breaker for m in self._live.current().pool.members if m.breaker is not None}

    @property
    def bulkhead(self) -> Bulkhead | None:
        return self._live.current().bulkhead

    def close(self) -> None:
        self._live.close()

    def loaded_policy(self) -> Policy:
        """The policy as the last call loaded it (no reload check: for code on
        the event loop that just made a call, like the stream supervisor)."""
        return self._live.loaded().policy

    def endpoint_names(self) -> tuple[str, ...]:
        """The names of the endpoints calls may go to ("" for a single URL),
        as the last call loaded them."""
        return tuple(member.name for member in self._live.loaded().pool.members)

    async def astream(self, path: str, *, json: Any, codec: WireCodec | None = None,
                      headers: dict[str, str] | None = None) -> SupervisedStream:
        """A supervised stream (resilience.client.stream): `json` is the
        request body, `codec` its wire format (OpenAI chat completions by
        default). Returns the started `SupervisedStream`; raises the
        `UpstreamError` kinds, or `UpstreamHTTPError` with the provider's
        error answer on `.response`."""
        stream = SupervisedStream(self, path=path, body=json, codec=codec or OPENAI_CHAT, headers=headers)
        refused = await stream.start()
        if refused is not None:
            raise http_failure(self.name, refused.status_code, refused, retried=False, attempts=1,
                               retry_after=retry_after_of(refused.headers))
        return stream

    # -- the sync face -------------------------------------------------------------------
    def get(self, path: str, **kwargs: Any) -> UpstreamResponse:
        return self.request("GET", path, **kwargs)

    def head(self, path: str, **kwargs: Any) -> UpstreamResponse:
        return self.request("HEAD", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> UpstreamResponse:
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> UpstreamResponse:
        return self.request("PUT", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> UpstreamResponse:
        return self.request("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> UpstreamResponse:
        return self.request("DELETE", path, **kwargs)

    def request(self, method: str, path: str, *, params: Any = None, headers: dict[str, str] | None = None,
                data: Any = None, json: Any = None, cache: bool | None = None, stream: bool = False,
                raise_for_status: bool = True, avoid: str = "", endpoint: str = "") -> UpstreamResponse:
        """Call the upstream; returns an `UpstreamResponse` (`from_cache`,
        `stale`, `shared`, `attempts`) or raises an `UpstreamError` kind.

        `cache=False` bypasses the response cache (and single-flight);
        `stream=True` returns before a successful body is read (never cached;
        close the response); `raise_for_status=False` returns 4xx/5xx answers
        instead of raising (they still count as the policy says).

        `avoid` names an endpoint the first attempt should not use when
        another is available; `endpoint` pins the call to one endpoint (the
        stream supervisor's continuations, resilience.client.stream). A
        streamed answer is settled and logged when it is closed.
        """
        started = time.perf_counter()
        built = self._live.current()
        plan = self._begin(built, method, path, params, headers, data, json, cache, stream, sync_from_entry,
                           avoid=avoid, only=endpoint)
        answer = plan.refusal or self._drive(plan.steps)  # type: ignore[arg-type]
        self._emit_when_done(built, plan, answer, started, stream=stream)
        return answer.unwrap(raise_for_status)

    def _drive(self, steps: Steps) -> Answer:
        value: Any = None
        failure: Exception | None = None
        try:
            while True:
                try:
                    command = steps.throw(failure) if failure is not None else steps.send(value)
                except StopIteration as stop:
                    return stop.value
                value, failure = None, None
                try:
                    value = self._perform(command)
                except Exception as err:  # handed to the steps, which classify it
                    failure = err
        finally:
            steps.close()

    @staticmethod
    def _perform(command: Command) -> Any:
        if isinstance(command, Send):
            member = command.member
            return send(member.session, member.policy, command.spec, command.credentials, command.trace,
                        stream=command.stream)
        if isinstance(command, Acquire):
            return command.bulkhead.acquire(command.timeout)
        if isinstance(command, Follow):
            command.future.exception(timeout=command.timeout)  # TimeoutError when the wait runs out
            return None
        if isinstance(command, Blocking):
            return command.work()
        time.sleep(command.seconds)
        return None

    # -- the async face ------------------------------------------------------------------
    async def aget(self, path: str, **kwargs: Any) -> AsyncUpstreamResponse:
        return await self.arequest("GET", path, **kwargs)

    async def ahead(self, path: str, **kwargs: Any) -> AsyncUpstreamResponse:
        return await self.arequest("HEAD", path, **kwargs)

    async def apost(self, path: str, **kwargs: Any) -> AsyncUpstreamResponse:
        return await self.arequest("POST", path, **kwargs)

    async def aput(self, path: str, **kwargs: Any) -> AsyncUpstreamResponse:
        return await self.arequest("PUT", path, **kwargs)

    async def apatch(self, path: str, **kwargs: Any) -> AsyncUpstreamResponse:
        return await self.arequest("PATCH", path, **kwargs)

    async def adelete(self, path: str, **kwargs: Any) -> AsyncUpstreamResponse:
        return await self.arequest("DELETE", path, **kwargs)

    async def arequest(self, method: str, path: str, *, params: Any = None,
                       headers: dict[str, str] | None = None, data: Any = None, json: Any = None,
                       cache: bool | None = None, stream: bool = False,
                       raise_for_status: bool = True, avoid: str = "",
                       endpoint: str = "") -> AsyncUpstreamResponse:
        """`request()` for async code: the same steps, errors and call-log
        rows; returns an `AsyncUpstreamResponse` (an httpx2.Response; with
        `stream=True` iterate it with `aiter_bytes()` and `aclose()` it)."""
        started = time.perf_counter()
        if self._live.due():
            built = await sync_to_async(self._live.current)()
        else:
            built = self._live.current()
        plan = self._begin(built, method, path, params, headers, data, json, cache, stream,
                           async_from_entry, avoid=avoid, only=endpoint)
        answer = plan.refusal or await self._adrive(plan.steps)  # type: ignore[arg-type]
        self._emit_when_done(built, plan, answer, started, stream=stream)
        return answer.unwrap(raise_for_status)

    async def _adrive(self, steps: Steps) -> Answer:
        value: Any = None
        failure: Exception | None = None
        try:
            while True:
                try:
                    command = steps.throw(failure) if failure is not None else steps.send(value)
                except StopIteration as stop:
                    return stop.value
                value, failure = None, None
                try:
                    value = await self._aperform(command)
                except Exception as err:  # handed to the steps, which classify it
                    failure = err
        finally:
            steps.close()

    @staticmethod
    async def _aperform(command: Command) -> Any:
        if isinstance(command, Send):
            member = command.member
            return await asend(member.apool, member.policy, build_request(command.spec, command.credentials),
                               command.trace, stream=command.stream)
        if isinstance(command, Acquire):
            return await command.bulkhead.aacquire(command.timeout)
        if isinstance(command, Follow):
            if not command.future.done():
                await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(command.future)), command.timeout)
            return None
        if isinstance(command, Blocking):
            return await sync_to_async(command.work, thread_sensitive=False)()
        await asyncio.sleep(command.seconds)
        return None

    # -- the one logic ---------------------------------------------------------------------
    def _begin(self, built: Built, method: str, path: str, params: Any, headers: dict[str, str] | None,
               data: Any, json: Any, cache: bool | None, stream: bool, from_entry: FromEntry, *,
               avoid: str = "", only: str = "") -> Plan:
        """Check the call and plan its steps, or refuse it."""
        policy = built.policy
        method = method.upper()
        try:
            if not policy.enabled:
                raise errors.UpstreamDisabled(f"upstream {self.name!r} is disabled", upstream=self.name)
            url = join_url(policy.base_url, path, upstream=self.name)
        except errors.UpstreamError as err:
            return Plan(method, redact_path(str(path)[:200], built.credentials.secret_names), None,
                        refusal=Answer(Result(Outcome.REFUSED, error=err.message), error=err))
        merged = {**policy.default_headers, **headers} if headers else policy.default_headers
        spec = RequestSpec(method, url, params, merged, data, json)
        if policy.cache_ttl > 0 and method in policy.cache_methods and cache is not False \
                and not stream and spec.cacheable:
            steps = self._cached(built, spec, from_entry)
        else:
            steps = self._fetch(built, spec, from_entry, stream=stream, stale=None, avoid=avoid, only=only)
        return Plan(method, path, spec, steps=steps)

    def _cached(self, built: Built, spec: RequestSpec, from_entry: FromEntry) -> Steps:
        """The response cache and single-flight in front of `_fetch`."""
        policy = built.policy
        key = spec.cache_key(self.name, policy.cache_vary_headers)
        store = default_cache()
        shared_store = cache_is_shared(store)
        near_seconds = resilience_settings.HTTP_CACHE_NEAR_SECONDS if shared_store else 0
        found = self.near.get(key) if near_seconds else None
        if found is None:
            found = store.get(key)
        entry = found if isinstance(found, CacheEntry) else None
        now = responses.wall_clock()
        if entry is not None and entry.fresh(now):
            if near_seconds:
                self.near.put(key, entry, min(near_seconds, entry.expires - now))
            return Answer(Result(Outcome.CACHE_HIT, status=entry.status, cache_hit=True),
                          response=from_entry(entry, spec, CallMeta(from_cache=True)))
        stale = entry if policy.cache_serve_stale else None

        if not policy.single_flight:
            answer = yield from self._fetch(built, spec, from_entry, stream=False, stale=stale)
            self._store(key, answer, policy)
            return answer

        future, leader = self._flight.join(key)
        if not leader:
            try:
                yield Follow(future, policy.deadline)
            except TimeoutError:
                failure = errors.UpstreamTimeout(f"{self.name}: deadline passed waiting for a shared call",
                                                 upstream=self.name)
                return Answer(Result(Outcome.TIMEOUT, error=failure.message), error=failure)
            try:
                shared = SingleFlight.outcome(future)
            except errors.UpstreamError as err:
                return Answer(Result(outcome_of(err), error=err.message), error=err)
            return self._follow(shared, spec, from_entry)

        lock = None
        try:
            if shared_store:
                across = SingleFlight.across(key, policy.deadline, lambda: _fresh(default_cache().get(key)))
                while True:
                    try:
                        seconds = next(across)
                    except StopIteration as stop:
                        kind, value = stop.value
                        break
                    yield Sleep(seconds)
                if kind == "found":
                    shared = Shared(Result(Outcome.SHARED, status=value.status, cache_hit=True), value)
                    self._flight.finish(key, future, result=shared)
                    return self._follow(shared, spec, from_entry)
                lock = value
            answer = yield from self._fetch(built, spec, from_entry, stream=False, stale=stale)
            self._store(key, answer, policy)
        except GeneratorExit:
            self._flight.finish(key, future, error=errors.UpstreamError(
                f"{self.name}: the call this one waited for was abandoned", upstream=self.name))
            raise
        except BaseException as err:
            self._flight.finish(key, future, error=err)
            raise
        finally:
            release_lock(lock)
        self._flight.finish(key, future, result=self._shareable(answer, policy))
        return answer

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
    def _store(key: str, answer: Answer, policy: Any) -> None:
        response = answer.response
        if response is None or response.stale or not 200 <= response.status_code < 300:
            return
        keep = policy.cache_ttl + (policy.cache_stale_max_age if policy.cache_serve_stale else 0)
        default_cache().set(key, response.to_entry(policy.cache_ttl), timeout=keep)

    def _fetch(self, built: Built, spec: RequestSpec, from_entry: FromEntry, *, stream: bool,
               stale: CacheEntry | None, avoid: str = "", only: str = "") -> Steps:
        """One logical upstream call: the endpoint, its breaker, the bulkhead,
        then attempts until one answers or none may follow.

        Every attempt goes to an endpoint `Pool.choose` gives (a single-URL
        upstream's pool has one). Whether a failure is retried on its own
        endpoint (by the transport, with the policy's waits) or moves the
        call to another is the policy's `Discipline`; a move goes to an
        endpoint not yet tried, then to any other, an endpoint that left an
        attempt unanswered last of all, within the policy's retries and the
        one deadline. The trace's history names each attempt's endpoint."""
        policy, pool, bulkhead = built.policy, built.pool, built.bulkhead
        choice = _first_choice(pool, avoid=avoid, only=only)
        if isinstance(choice, Unavailable):
            return self._unavailable(choice, pool, stale, spec, from_entry)
        attempt = Attempt(spec, from_entry, stale, stream, choice,
                          Trace(deadline=time.monotonic() + policy.deadline))
        if bulkhead is not None:
            granted = yield Acquire(bulkhead, policy.bulkhead_wait)
            if not granted:
                _release_probe(choice)
                failure = errors.BulkheadFull(
                    f"{self.name}: {bulkhead.limit} calls already in flight (bulkhead)", upstream=self.name,
                    retry_after=max(1.0, policy.bulkhead_wait))
                return self._stale_or(Result(Outcome.REJECTED, breaker_state=choice.state,
                                             error=failure.message), failure, stale, spec, from_entry)
            attempt.release = bulkhead.release
        try:
            while True:
                outcome = yield from self._attempt(built, attempt)
                if isinstance(outcome, Answer):
                    return outcome
                attempt.choice = outcome
        finally:
            if attempt.release is not None:
                attempt.release()

    def _unavailable(self, choice: Unavailable, pool: Pool, stale: CacheEntry | None, spec: RequestSpec,
                     from_entry: FromEntry) -> Answer:
        """No endpoint can take the call: a missing credential, or every one out."""
        if choice.retry_after is None and choice.missing is not None:  # takes no probe slot
            failure = choice.missing.missing_error()
            return Answer(Result(Outcome.REFUSED, error=failure.message), error=failure)
        if pool.single:
            message = f"circuit breaker for {self.name!r} is open"
        else:
            message = f"every endpoint of {self.name!r} is out (breaker open or cooling down)"
        failure = errors.BreakerOpen(message, upstream=self.name, retry_after=choice.retry_after)
        result = Result(Outcome.BREAKER_OPEN, breaker_state="open", error=failure.message)
        return self._stale_or(result, failure, stale, spec, from_entry)

    def _attempt(self, built: Built, attempt: Attempt) -> Generator[Command, Any, Answer | Choice]:
        """Send one attempt (the transport may retry it on its endpoint, as
        the discipline says); its answer, or the choice for the next one."""
        policy, pool, trace, member = built.policy, built.pool, attempt.trace, attempt.member
        attempt.tried += (member,)
        trace.endpoint = member.name
        if not pool.single:
            # A half-open probe's verdict is its first answer: it never stays for a retry.
            probe = attempt.choice.admission is not None and attempt.choice.admission.probe
            trace.discipline = Discipline(alternative=pool.has_alternative(member, avoid=attempt.silent),
                                          sticky=pool.strategy == "priority" and not probe,
                                          retry_after_max=policy.retry_after_max,
                                          retry_total=policy.retry_total)
        credentials = member.credentials_ready()
        if credentials is None:  # an account whose token is due: refreshed off the event loop
            credentials = yield Blocking(member.credentials_now)
            if not credentials.secret:
                return self._account_unavailable(built, attempt, credentials)
        attempt.began, attempt.sent_at = time.perf_counter(), time.monotonic()
        member.in_flight += 1
        try:
            response = yield Send(member, spec_for(member, attempt.spec, policy, model=attempt.model),
                                  credentials, trace, attempt.stream)
        except Exception as exc:
            member.in_flight -= 1
            return self._failed(built, attempt, exc, credentials)
        if response.status_code >= 400:  # an error answer may echo the credentials it was sent
            credentials.mask(response, attempt.spec)
        if response.status_code == 401 and member.account is not None:
            first = sum(1 for m in attempt.tried if m is member) == 1
            renewed = ""
            if first and attempt.trace.remaining() > 0:
                renewed = yield Blocking(lambda: member.account.refresh_after_401(credentials.secret))
            again = self._account_refused(built, attempt, response, renewed=renewed)
            if again is not None:
                member.in_flight -= 1
                return again
        return self._answered(built, attempt, response)

    def _account_unavailable(self, built: Built, attempt: Attempt,
                             credentials: Credentials) -> Answer | Choice:
        """An account with no live token (its refresh failed): nothing is
        sent; the next endpoint, else the refusal naming why."""
        admission = attempt.choice.admission
        if admission is not None and admission.probe:
            attempt.member.breaker.storage.release_probe()  # type: ignore[union-attr]
        following = attempt.next_choice(built.pool)
        if isinstance(following, Choice) and following.member is not attempt.member:
            return following
        failure = credentials.missing_error()
        result = Result(Outcome.REFUSED, error=failure.message, endpoint=attempt.member.name)
        return Answer(result, error=failure)

    def _account_refused(self, built: Built, attempt: Attempt, response: Any, *,
                         renewed: str) -> Choice | None:
        """A 401 on an OAuth2 account's token: the first costs one refresh
        (or reuses one made elsewhere) and one retry on the same account,
        inside the deadline; a second cools the account for its backoff and
        the call fails over (None: the 401 stands as an answer)."""
        member, trace = attempt.member, attempt.trace
        if renewed:
            trace.history.append({"status": 401, "error": "token_refreshed", "wait_s": 0.0,
                                  "at_ms": round((time.monotonic() - trace.started) * 1000, 1),
                                  "endpoint": member.name})
            return attempt.choice
        built.pool.cool(member, resilience_settings.ACCOUNT_BACKOFF_BASE)
        if attempt.choice.admission is not None:
            member.breaker.record_failure(attempt.choice.admission, errors.UpstreamHTTPError(  # type: ignore[union-attr]
                "status 401", upstream=self.name, response=response))
        if self._may_fail_over(built.pool, built.policy, trace):
            following = attempt.next_choice(built.pool)
            if isinstance(following, Choice) and following.member is not member:
                return following
        return None

    def _failed(self, built: Built, attempt: Attempt, exc: Exception,
                credentials: Credentials) -> Answer | Choice:
        """A send that got no answer: count it, then move on or give up."""
        policy, pool, trace, member = built.policy, built.pool, attempt.trace, attempt.member
        failure = classify(exc, trace, upstream=self.name)
        failure.message = credentials.redact(failure.message)
        local = isinstance(failure, errors.LocalCapacityExhausted)
        admission, breaker = attempt.choice.admission, member.breaker
        if admission is not None:
            if not local:
                breaker.record_failure(admission, exc)  # type: ignore[union-attr]
            elif admission.probe:
                breaker.storage.release_probe()  # type: ignore[union-attr]
        if not local:
            pool.observe(member, ok=False, latency_ms=attempt.elapsed_ms())
            if isinstance(failure, errors.UpstreamTimeout) and not nothing_sent(exc):
                attempt.silent |= {member}  # tried again only when nothing else is left
            if self._may_fail_over(pool, policy, trace) and (
                    nothing_sent(exc) or attempt.spec.method in policy.retry_methods):
                following = attempt.next_choice(pool)
                if isinstance(following, Choice):
                    return following
        result = Result(outcome_of(failure), attempts=max(1, len(trace.history)),
                        retries=tuple(trace.history), breaker_state=attempt.choice.state,
                        error=failure.message, endpoint=member.name)
        return self._stale_or(result, failure, attempt.stale, attempt.spec, attempt.from_entry)

    def _answered(self, built: Built, attempt: Attempt, response: Any) -> Answer | Choice:
        """An attempt that got an answer: count it; a retried failure moves
        on, an unfixable one may go to the fallback model; else the answer."""
        policy, pool, trace, member = built.policy, built.pool, attempt.trace, attempt.member
        status = response.status_code
        verdict = unfixable_answer(status, response.content) if status == 400 else ""
        retryable = status in policy.retry_statuses and attempt.spec.method in policy.retry_methods
        retried = retryable and bool(trace.history) and not verdict  # never repeated as it is
        upstream_failed = status >= 500 or retried
        if status in (429, 503) and not pool.single:  # a single URL answers its callers as before
            asked = retry_after_of(response.headers)
            if asked:
                pool.cool(member, asked)
        admission, breaker = attempt.choice.admission, member.breaker
        settled_later = attempt.stream and status < 400  # a stream is judged when it closes
        if admission is not None:
            if upstream_failed:
                breaker.record_failure(admission, errors.UpstreamHTTPError(  # type: ignore[union-attr]
                    f"status {status}", upstream=self.name, response=response))
            elif not settled_later:
                breaker.record_success(admission)  # type: ignore[union-attr]
        if not settled_later:
            pool.observe(member, ok=not upstream_failed and status != 429, latency_ms=attempt.elapsed_ms())
        following = None
        if verdict:
            following = self._model_fallback(pool, policy, attempt, verdict)
        elif retried and self._may_fail_over(pool, policy, trace):
            following = attempt.next_choice(pool)
        if isinstance(following, Choice):  # the error answer's body was read: nothing to close
            member.in_flight -= 1
            return following
        return self._answer(attempt, response, pool, retried=retried, upstream_failed=upstream_failed,
                            verdict=verdict)

    def _model_fallback(self, pool: Pool, policy: Any, attempt: Attempt, verdict: str) -> Choice | None:
        """The next attempt's endpoint when a 400 says the model cannot take
        this request (`verdict`: its context, its content policy) and the
        policy names a model to ask instead; None when the answer stands."""
        fallback = {CONTEXT_LENGTH: policy.context_fallback_model,
                    CONTENT_POLICY: policy.content_policy_fallback_model}.get(verdict, "")
        trace = attempt.trace
        if not fallback or fallback == attempt.model or trace.remaining() <= 0:
            return None
        if not names_model(attempt.spec):
            return None
        trace.history.append({"status": 400, "error": verdict, "wait_s": 0.0,
                              "at_ms": round((time.monotonic() - trace.started) * 1000, 1),
                              "endpoint": attempt.member.name, "fallback_model": fallback})
        logger.debug("upstream %s: %s from %s, asking %s", self.name, verdict, attempt.member.name, fallback)
        attempt.model, attempt.tried = fallback, ()  # the model changed, not the endpoint: from the top
        following = pool.choose(avoid=attempt.silent)
        return following if isinstance(following, Choice) else None

    def _answer(self, attempt: Attempt, response: Any, pool: Pool, *, retried: bool, upstream_failed: bool,
                verdict: str = "") -> Answer:
        """The call's answer from the last attempt's response."""
        trace, member = attempt.trace, attempt.member
        status = response.status_code
        attempts = len(trace.history) + (0 if retried else 1)
        response.meta = CallMeta(attempts=attempts, endpoint=member.name, model=attempt.model,
                                 sent_at=attempt.sent_at)
        result = Result(Outcome.OK, status=status, attempts=attempts, retries=tuple(trace.history),
                        breaker_state=attempt.choice.state, endpoint=member.name)
        if status < 400 and attempt.stream:
            # The slot and the in-flight count are held while the caller reads.
            response.when_closed(_on_close(member, attempt.release))
            response.when_closed(_settle_stream(response, member, attempt.choice.admission, pool,
                                                attempt.began))
            attempt.release = None
        else:
            member.in_flight -= 1
        if status < 400:
            return Answer(result, response=response)
        failure = http_failure(self.name, status, response, retried=retried, attempts=attempts,
                               retry_after=retry_after_of(response.headers))
        if verdict:
            failure.message = f"{failure.message} ({verdict})"
        result = replace(result, outcome=Outcome.HTTP_ERROR, error=failure.message)
        if upstream_failed and attempt.stale is not None:
            return self._stale_or(result, failure, attempt.stale, attempt.spec, attempt.from_entry)
        return Answer(result, response=response, http_error=failure)

    @staticmethod
    def _may_fail_over(pool: Pool, policy: Any, trace: Trace) -> bool:
        """Whether a failed attempt may move to another endpoint: there is
        one, a retry is left, and so is time."""
        return not pool.single and len(trace.history) <= policy.retry_total and trace.remaining() > 0

    def _stale_or(self, result: Result, failure: errors.UpstreamError, stale: CacheEntry | None,
                  spec: RequestSpec, from_entry: FromEntry) -> Answer:
        """The failure, or the expired copy when the policy serves stale."""
        if stale is None:
            return Answer(result, error=failure)
        logger.debug("upstream %s: serving stale copy after %s", self.name, failure.code)
        response = from_entry(stale, spec, CallMeta(from_cache=True, stale=True, attempts=result.attempts))
        return Answer(replace(result, outcome=Outcome.STALE, status=stale.status, cache_hit=True),
                      response=response)

    # -- the record ------------------------------------------------------------------------
    def _emit_when_done(self, built: Built, plan: Plan, answer: Answer, started: float, *,
                        stream: bool) -> None:
        """The call's record now, or for a streamed answer when it is closed:
        with the time and latency of its headers, and the stream's verdict."""
        response = answer.response
        if not stream or response is None or answer.error is not None or response.meta.from_cache \
                or response.status_code >= 400:
            self._emit(built, plan, answer, started)
            return
        latency, created = time.perf_counter() - started, time.time()

        def closed() -> None:
            result = answer.result
            failure = response.stream_failure
            if failure is not None:
                result = replace(result, outcome=outcome_of(failure), error=failure.message)
            if response.stream_counts:
                result = replace(result, stream=tuple(sorted(response.stream_counts.items())))
            self._emit(built, plan, replace(answer, result=result), started, latency=latency, created=created)

        response.when_closed(closed)

    def _emit(self, built: Built, plan: Plan, answer: Answer, started: float, *,
              latency: float | None = None, created: float | None = None) -> None:
        if latency is None:
            latency = time.perf_counter() - started
        record = CallRecord(
            upstream=self.name, method=plan.method, spec=plan.spec, raw_path=plan.path,
            secret_names=built.credentials.secret_names, result=answer.result,
            latency_ms=round(latency * 1000, 3), created=time.time() if created is None else created,
            request_id=current_request_id.get() or "", sample_rate=built.policy.log_sample_rate,
            endpoint=answer.result.endpoint, caller=current_caller.get())
        call_record_emit(record, sender=UpstreamClient)
