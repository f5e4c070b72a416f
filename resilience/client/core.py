"""The resilient client's face: one logic of steps, two faces (sync and async).

A call's whole logic is a generator of named steps, each in a module of its own:
the cache step (resilience.client.cached: the response cache and single-flight),
the attempt step (resilience.client.attempt: the endpoint and its breaker, the
bulkhead, sending, error classification, failover to another endpoint and the
stale fallback, on one `Attempt` value) and the record step
(resilience.client.recorder). Where the steps need I/O they yield a command
(resilience.client.steps: `Send`, `Sleep`, `Follow`, `Acquire`, `Admit`); `request()`
performs them with requests and threads, `arequest()` with httpx2 and the event
loop, and both send the outcome back in. Everything else (what to cache, what
counts against the breaker, what is logged) is decided once, in the steps.

A call ends as an `Answer`: a `Result` (what the call-log row says), the
caller's response, and the error to raise. The record is built from it in
one place (resilience.client.record).

Under ASGI the sync face must not run on the event loop (it blocks while it
waits on the network): from async code use `aget()`/`arequest()`, or
`asgiref.sync.sync_to_async(upstream(name).get)`.

The hop policy of the async face: the steps run on the event loop, and only
work that touches the shared store leaves it. The steps say which: a cache
get or set, a due re-read of the breakers, cooldowns or score window, a
breaker or cooldown write, a probe slot, a single-flight lock is an `OnStore`
command, which the async face performs in a worker thread
(`asyncio.to_thread`) while the store is Redis and inline on local memory.
Choosing an endpoint is tried from process memory first
(`Pool.choose(in_memory=True)`, which raises `StoreNeeded` before touching
anything when a read is due, at most every 0.25 s per breaker and pool) and
done again in an `OnStore` command only then; a plain success is counted in
memory. So a healthy uncached call, or one answered from the near cache,
makes no thread hop at all; a call that misses the near cache makes one per
Redis read or write it needs. An `Admit` (an endpoint's quota: one Lua
script) also runs in a worker thread on Redis, a `Blocking` command
(database, token server) always does, and the policy is loaded from the
database in a worker thread when a check is due. The pool's cooldown refresh
takes a lock a reading thread holds: it is only ever taken off the loop.
`bench/bench_async_steps.py` weighs this against the per-step hop it
replaced, one `sync_to_async` per call and Django's async cache methods.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

from asgiref.sync import sync_to_async

from resilience import exceptions as errors
from resilience.cache import cache_is_shared, default_cache
from resilience.client.asend import asend, build_request
from resilience.client.attempt import Attempts
from resilience.client.breaker import SharedBreaker
from resilience.client.bulkhead import Bulkhead
from resilience.client.cached import CachedSteps
from resilience.client.db import given_back
from resilience.client.flight import SingleFlight
from resilience.client.live import Built, LivePolicy
from resilience.client.openai_wire import OPENAI_CHAT
from resilience.client.policy import Policy
from resilience.client.record import Result
from resilience.client.recorder import answer_record
from resilience.client.responses import AsyncUpstreamResponse, NearCache, UpstreamResponse
from resilience.client.send import send
from resilience.client.spec import RequestSpec
from resilience.client.steps import (
    Acquire,
    Admit,
    Answer,
    Blocking,
    Call,
    Command,
    Follow,
    FromEntry,
    OnStore,
    Plan,
    Send,
    Steps,
    async_from_entry,
    http_failure,
    retry_after_of,
    sync_from_entry,
)
from resilience.client.stream import SupervisedStream, UsageOption, WireCodec
from resilience.client.urls import join_url, redact_path
from resilience.client.wires import WireBridge
from resilience.models import Outcome


class UpstreamClient:
    """Process-wide client for one upstream (thread- and task-safe). Get it
    with `resilience.upstream(name)`; never construct one per call."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._live = LivePolicy(name)
        self.near = NearCache()
        self._attempts = Attempts(name)
        self._cache = CachedSteps(name, attempts=self._attempts, flight=SingleFlight(), near=self.near)
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
                      headers: dict[str, str] | None = None,
                      wire: WireBridge | None = None,
                      optional_usage: UsageOption | None = None) -> SupervisedStream:
        """A supervised stream (resilience.client.stream): `json` is the
        request body, `codec` its wire format (OpenAI chat completions by
        default; with a `wire` bridge, each attempt's events are parsed in
        the format of the endpoint that answered). Returns the started
        `SupervisedStream`; raises the `UpstreamError` kinds, or
        `UpstreamHTTPError` with the provider's error answer on `.response`.
        `optional_usage`: the body's usage request is the caller's code's, not
        its caller's: dropped for an endpoint that refuses it."""
        stream = SupervisedStream(self, path=path, body=json, codec=codec or OPENAI_CHAT, headers=headers,
                                  wire=wire, optional_usage=optional_usage)
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
                raise_for_status: bool = True, avoid: str = "", endpoint: str = "",
                wire: WireBridge | None = None) -> UpstreamResponse:
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

        `wire` (a resilience.client.wires.WireBridge) says the body's wire
        format: an attempt on an endpoint speaking another is translated
        there and its answer back, and the bridge's `vary` headers join the
        cache key.
        """
        started = time.perf_counter()
        built = self._live.current()
        call = Call(method.upper(), path, params, headers, data, json, cache, stream, avoid, endpoint, wire)
        plan = self._plan(built, call, sync_from_entry)
        answer = plan.refusal or self._drive(plan.steps)  # type: ignore[arg-type]
        answer_record(answer, name=self.name, built=built, plan=plan, started=started, stream=stream,
                      sender=UpstreamClient)
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
        if isinstance(command, Admit):
            return command.run()
        if isinstance(command, (Blocking, OnStore)):
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
                       endpoint: str = "", wire: WireBridge | None = None) -> AsyncUpstreamResponse:
        """`request()` for async code: the same steps, errors and call-log
        rows; returns an `AsyncUpstreamResponse` (an httpx2.Response; with
        `stream=True` iterate it with `aiter_bytes()` and `aclose()` it)."""
        started = time.perf_counter()
        live = self._live
        if live.due():
            built = await sync_to_async(given_back(live.current))()
        else:
            built = live.loaded()
            live.read_ahead()
        call = Call(method.upper(), path, params, headers, data, json, cache, stream, avoid, endpoint, wire)
        plan = self._plan(built, call, async_from_entry)
        answer = plan.refusal or await self._adrive(plan.steps)  # type: ignore[arg-type]
        answer_record(answer, name=self.name, built=built, plan=plan, started=started, stream=stream,
                      sender=UpstreamClient)
        return answer.unwrap(raise_for_status)

    async def _adrive(self, steps: Steps) -> Answer:
        value: Any = None
        failure: Exception | None = None
        # The steps run on the loop: what touches the shared store comes as an
        # `OnStore` command (see the module docstring's hop policy).
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
        if isinstance(command, (OnStore, Admit)):  # the shared store: off the loop while Redis serves
            work = command.work if isinstance(command, OnStore) else command.run
            if cache_is_shared(default_cache()):
                return await asyncio.to_thread(work)
            return work()
        if isinstance(command, Blocking):
            return await sync_to_async(command.work, thread_sensitive=False)()
        await asyncio.sleep(command.seconds)
        return None

    # -- the one logic ---------------------------------------------------------------------
    def _plan(self, built: Built, call: Call, from_entry: FromEntry) -> Plan:
        """Check the call and plan its steps (through the cache step when the policy caches it), or
        refuse it (the upstream is disabled, or the path would leave its base URL)."""
        policy = built.policy
        try:
            if not policy.enabled:
                raise errors.UpstreamDisabled(f"upstream {self.name!r} is disabled", upstream=self.name)
            url = join_url(policy.base_url, call.path, upstream=self.name)
        except errors.UpstreamError as err:
            return Plan(call.method, redact_path(str(call.path)[:200], built.credentials.secret_names), None,
                        refusal=Answer(Result(Outcome.REFUSED, error=err.message), error=err))
        merged = {**policy.default_headers, **call.headers} if call.headers else policy.default_headers
        spec = RequestSpec(call.method, url, call.params, merged, call.data, call.json)
        if policy.cache_ttl > 0 and call.method in policy.cache_methods and call.cache is not False \
                and not call.stream and spec.cacheable:
            steps = self._cache.run(built, spec, from_entry, wire=call.wire)
        else:
            steps = self._attempts.fetch(built, spec, from_entry, stream=call.stream, stale=None,
                                         avoid=call.avoid, only=call.endpoint, wire=call.wire)
        return Plan(call.method, call.path, spec, steps=steps)
