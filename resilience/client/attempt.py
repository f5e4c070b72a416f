"""The attempt step of the resilient client: one logical upstream call as attempts on endpoints.

`Attempts.fetch` picks the endpoint (resilience.client.endpoints), takes the bulkhead's slot, sends
(the transport retries on the endpoint as the policy's `Discipline` says), counts each outcome against
the endpoint's breaker and score, and moves a failed attempt to another endpoint or the fallback model
while retries and the deadline allow. The call's state lives on one `Attempt` value, never in locals
threaded through. On failure it answers the `UpstreamError` kind (or the stale copy when the policy
serves stale); it raises nothing of its own. Used by resilience.client.core and .cached only.
"""
from __future__ import annotations

import json as json_module
import logging
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from resilience import exceptions as errors
from resilience.client.admission import Ticket, admitted, settled
from resilience.client.breaker import StoreNeeded
from resilience.client.credentials import Credentials
from resilience.client.endpoints import Choice, Member, Pool, Unavailable
from resilience.client.failures import (
    CONTENT_POLICY,
    CONTEXT_LENGTH,
    classify,
    nothing_sent,
    unfixable_answer,
)
from resilience.client.live import Built
from resilience.client.policy import Discipline, Trace
from resilience.client.quota import Reservation
from resilience.client.record import Result
from resilience.client.responses import CacheEntry, CallMeta
from resilience.client.spec import RequestSpec
from resilience.client.steps import (
    Acquire,
    Answer,
    Blocking,
    Command,
    FromEntry,
    OnStore,
    Send,
    Steps,
    http_failure,
    outcome_of,
    retry_after_of,
)
from resilience.client.wires import WireBridge, encoded_url, translated
from resilience.conf import resilience_settings
from resilience.models import Outcome

logger = logging.getLogger(__name__)


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


def spec_encoded(spec: RequestSpec, member: Member, bridge: WireBridge, *, upstream: str) -> RequestSpec:
    """The call as sent to `member` when it speaks another wire format than
    the call (`bridge.format`): the bridge's path, body and headers for it.
    Raises `UntranslatableRequest` when the body cannot be put in its format."""
    body = _json_body(spec)
    try:
        path, encoded, headers = bridge.encode(body, spec.headers, target=member.spec.wire_format)
    except ValueError as invalid:
        raise errors.UntranslatableRequest(
            f"{upstream}: the request cannot be sent to endpoint {member.name!r} "
            f"({member.spec.wire_format}): {invalid}", upstream=upstream) from None
    url = encoded_url(member.base_url, path, upstream=upstream)
    return RequestSpec(spec.method, url, spec.params, headers, None, encoded)


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
    #: Its place in admission (limited endpoints only) and the room the next attempt holds.
    pinned: bool = False  # `only` named its endpoint: admission never moves it
    ticket: Ticket | None = None
    held: Reservation | None = None
    admitted: bool = False
    #: The call's wire format and its translations (resilience.client.wires); None: sent as it is.
    wire: WireBridge | None = None

    @property
    def member(self) -> Member:
        return self.choice.member

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.began) * 1000

    def next_choice(self, pool: Pool) -> Choice | Unavailable:
        """Where a failed attempt moves: not yet tried first, a silent
        endpoint last, never one that had its burst of attempts (called off
        the event loop: from work an `OnStore` command runs)."""
        spent = frozenset(m for m in pool.members if self.trace.burst_spent(m.name))
        return pool.choose(self.tried, avoid=self.silent, exclude=spent)


def _release_probe(choice: Choice) -> Generator[Command, Any, None]:
    """Give back a half-open probe slot the choice holds (a round trip: an `OnStore` command)."""
    admission, breaker = choice.admission, choice.member.breaker
    if admission is not None and admission.probe and breaker is not None:
        yield OnStore(breaker.storage.release_probe)


def _chosen(pool: Pool,
            choose: Callable[..., Choice | Unavailable]) -> Generator[Command, Any, Choice | Unavailable]:
    """`choose(in_memory=...)`: from process memory where the face runs when it can, else (a read
    of the shared state is due, a probe slot) as an `OnStore` command, which first re-reads what
    is due in `pool` so the next calls choose from memory again."""
    try:
        return choose(in_memory=True)
    except StoreNeeded:
        pass

    def reread_and_choose() -> Choice | Unavailable:
        pool.reread_due()
        return choose(in_memory=False)
    return (yield OnStore(reread_and_choose))


def _advanced_on_store(steps: Generator[Command, Any, Any]) -> Generator[Command, Any, Any]:
    """`steps` (admission to a limited endpoint: resilience.client.admission) with each of
    its advances as an `OnStore` command: between its own commands it may touch the store (a
    cooldown or breaker read while it moves the call, leaving the queue at the deadline)."""
    value: Any = None
    failure: Exception | None = None
    try:
        while True:
            done, out = yield OnStore(partial(_advance, steps, value, failure))
            if done:
                return out
            try:
                value, failure = (yield out), None
            except Exception as err:  # the face's failure, handed on to `steps`
                value, failure = None, err
    finally:
        steps.close()


def _advance(steps: Generator[Command, Any, Any], value: Any, failure: Exception | None) -> tuple[bool, Any]:
    """(False, the next command) or (True, what `steps` returned)."""
    try:
        return False, steps.throw(failure) if failure is not None else steps.send(value)
    except StopIteration as stop:
        return True, stop.value


def _answer_in_memory(policy: Any, attempt: Attempt, status: int) -> bool:
    """Whether counting an answer stays in process memory: a success that is no probe's, with no
    failure count to reset, nothing to cool, retry or fall back from. Everything else (breaker
    writes, cooldowns, the next endpoint's choice) runs as an `OnStore` command."""
    admission = attempt.choice.admission
    return status < 400 and status not in policy.retry_statuses and (
        admission is None or not (admission.probe or admission.fails_seen))


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


def _decode(response: Any, attempt: Attempt) -> None:
    """Put a translated attempt's read answer in the call's wire format
    (either face's response: its body is replaced, as masking does)."""
    response._content = attempt.wire.decode(  # type: ignore[union-attr]
        response.content, status=response.status_code, target=attempt.member.spec.wire_format,
        request=_json_body(attempt.spec))


def _first_choice(pool: Pool, *, avoid: str, only: str, in_memory: bool = False) -> Choice | Unavailable:
    """The first attempt's endpoint: `only` that one when named, else one
    other than `avoid` when another is available, else any (`in_memory`:
    see `Pool.choose`)."""
    if only:
        pinned = [m for m in pool.members if m.name == only]
        if pinned:
            return pool.choose(tuple(m for m in pool.members if m is not pinned[0]), in_memory=in_memory)
    if avoid and not pool.single:
        avoided = tuple(m for m in pool.members if m.name == avoid)
        if avoided:
            choice = pool.choose(avoided, in_memory=in_memory)
            if isinstance(choice, Choice) and not choice.forced:
                return choice
    return pool.choose(in_memory=in_memory)


def model_fallback(name: str, pool: Pool, policy: Any, attempt: Attempt, verdict: str) -> Choice | None:
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
    logger.debug("upstream %s: %s from %s, asking %s", name, verdict, attempt.member.name, fallback)
    attempt.model, attempt.tried = fallback, ()  # the model changed, not the endpoint: from the top
    following = pool.choose(avoid=attempt.silent)
    return following if isinstance(following, Choice) else None


def may_fail_over(pool: Pool, policy: Any, trace: Trace) -> bool:
    """Whether a failed attempt may move to another endpoint: there is
    one, a retry is left, and so is time."""
    return not pool.single and len(trace.history) <= policy.retry_total and trace.remaining() > 0


class Attempts:
    """The attempt step for one upstream (`name`): stateless between calls, so one per client."""

    def __init__(self, name: str) -> None:
        self.name = name

    def fetch(self, built: Built, spec: RequestSpec, from_entry: FromEntry, *, stream: bool,
              stale: CacheEntry | None, avoid: str = "", only: str = "",
              wire: WireBridge | None = None) -> Steps:
        """One logical upstream call: the endpoint, its breaker, the bulkhead,
        then attempts until one answers or none may follow.

        Every attempt goes to an endpoint `Pool.choose` gives (a single-URL
        upstream's pool has one). Whether a failure is retried on its own
        endpoint (by the transport, with the policy's waits) or moves the
        call to another is the policy's `Discipline`; a move goes to an
        endpoint not yet tried, then to any other, an endpoint that left an
        attempt unanswered last of all, within the policy's retries and the
        one deadline. The trace's history names each attempt's endpoint.
        With a `wire` bridge, an attempt on an endpoint of another wire
        format is sent translated and its answer decoded back
        (resilience.client.wires)."""
        policy, pool, bulkhead = built.policy, built.pool, built.bulkhead
        choice = yield from _chosen(pool, lambda in_memory: _first_choice(pool, avoid=avoid, only=only,
                                                                          in_memory=in_memory))
        if isinstance(choice, Unavailable):
            return self._unavailable(choice, pool, stale, spec, from_entry)
        attempt = Attempt(spec, from_entry, stale, stream, choice,
                          Trace(deadline=time.monotonic() + policy.deadline), pinned=bool(only), wire=wire)
        refused = yield from self._admit(pool, attempt)  # before the bulkhead: a waiter holds no slot
        if refused is not None:
            return refused
        if bulkhead is not None:
            granted = yield Acquire(bulkhead, policy.bulkhead_wait)
            if not granted:
                yield from _release_probe(choice)
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

    def _admit(self, pool: Pool, attempt: Attempt) -> Generator[Command, Any, Answer | None]:
        """Room on the attempt's endpoint when its quota is active (resilience.client.admission):
        None once admitted (the choice may have moved), else the answer refusing the call."""
        attempt.admitted = True
        if not attempt.member.quota.active:
            return None
        if attempt.ticket is None:
            attempt.ticket = Ticket(attempt.spec, _json_body(attempt.spec))
        outcome = yield from _advanced_on_store(admitted(pool, attempt.choice, attempt.ticket,
                                                         deadline=attempt.trace.deadline,
                                                         movable=not attempt.pinned))
        if isinstance(outcome, errors.NoRoom):
            yield from _release_probe(attempt.choice)
            result = Result(Outcome.REJECTED, breaker_state=attempt.choice.state, error=outcome.message,
                            attempts=max(1, len(attempt.trace.history)), retries=tuple(attempt.trace.history))
            return self._stale_or(result, outcome, attempt.stale, attempt.spec, attempt.from_entry)
        attempt.choice, attempt.held = outcome
        return None

    def _attempt(self, built: Built, attempt: Attempt) -> Generator[Command, Any, Answer | Choice]:
        """Send one attempt (the transport may retry it on its endpoint, as
        the discipline says); its answer, or the choice for the next one."""
        if not attempt.admitted:  # a failover: room on the next endpoint first
            refused = yield from self._admit(built.pool, attempt)
            if refused is not None:
                return refused
        attempt.admitted = False
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
            credentials = yield Blocking(lambda: member.credentials_now(attempt.trace.remaining()))
            if not credentials.secret:
                return (yield OnStore(lambda: self._account_unavailable(built, attempt, credentials)))
        sent = spec_for(member, attempt.spec, policy, model=attempt.model)
        bridged = translated(attempt.wire, member.spec.wire_format)
        if bridged:
            try:
                sent = spec_encoded(sent, member, attempt.wire, upstream=self.name)  # type: ignore[arg-type]
            except errors.UntranslatableRequest as failure:
                yield from _release_probe(attempt.choice)
                return Answer(Result(Outcome.REFUSED, error=failure.message, endpoint=member.name),
                              error=failure)
        attempt.began, attempt.sent_at = time.perf_counter(), time.monotonic()
        member.in_flight += 1
        try:
            response = yield Send(member, sent, credentials, trace, attempt.stream)
        except Exception as exc:
            member.in_flight -= 1
            unanswered = exc
        else:
            unanswered = None
        if unanswered is not None:  # counted against the breaker, maybe moved: round trips
            return (yield OnStore(lambda: self._failed(built, attempt, unanswered, credentials)))
        if response.status_code >= 400:  # an error answer may echo the credentials it was sent
            credentials.mask(response, sent)
        if bridged and (response.status_code >= 400 or not attempt.stream):
            _decode(response, attempt)  # in the call's format from here on
        if response.status_code == 401 and member.account is not None:
            first = sum(1 for m in attempt.tried if m is member) == 1
            renewed = ""
            if first and attempt.trace.remaining() > 0:
                renewed = yield Blocking(lambda: member.account.refresh_after_401(
                    credentials.secret, attempt.trace.remaining()))
            again = yield OnStore(lambda: self._account_refused(built, attempt, response, renewed=renewed))
            if again is not None:
                member.in_flight -= 1
                return again
        if _answer_in_memory(policy, attempt, response.status_code):
            return self._answered(built, attempt, response)
        return (yield OnStore(lambda: self._answered(built, attempt, response)))

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
        if may_fail_over(built.pool, built.policy, trace):
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
            if may_fail_over(pool, policy, trace) and (
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
        settled(attempt.held, member, response, stream=attempt.stream)
        attempt.held = None
        verdict = unfixable_answer(status, response.content) if status == 400 else ""
        retryable = status in policy.retry_statuses and attempt.spec.method in policy.retry_methods
        retried = retryable and bool(trace.history) and not verdict  # never repeated as it is
        upstream_failed = status >= 500 or retried
        if status in (429, 503, 529) and not pool.single:  # a single URL answers its callers as before
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
            following = model_fallback(self.name, pool, policy, attempt, verdict)
        elif retried and may_fail_over(pool, policy, trace):
            following = attempt.next_choice(pool)
        if isinstance(following, Choice):  # the error answer's body was read: nothing to close
            member.in_flight -= 1
            return following
        return self._answer(attempt, response, pool, retried=retried, upstream_failed=upstream_failed,
                            verdict=verdict)

    def _answer(self, attempt: Attempt, response: Any, pool: Pool, *, retried: bool, upstream_failed: bool,
                verdict: str = "") -> Answer:
        """The call's answer from the last attempt's response."""
        trace, member = attempt.trace, attempt.member
        status = response.status_code
        attempts = len(trace.history) + (0 if retried else 1)
        response.meta = CallMeta(attempts=attempts, endpoint=member.name, model=attempt.model,
                                 sent_at=attempt.sent_at, wire=member.spec.wire_format)
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

    def _stale_or(self, result: Result, failure: errors.UpstreamError, stale: CacheEntry | None,
                  spec: RequestSpec, from_entry: FromEntry) -> Answer:
        """The failure, or the expired copy when the policy serves stale."""
        if stale is None:
            return Answer(result, error=failure)
        logger.debug("upstream %s: serving stale copy after %s", self.name, failure.code)
        response = from_entry(stale, spec, CallMeta(from_cache=True, stale=True, attempts=result.attempts))
        return Answer(replace(result, outcome=Outcome.STALE, status=stale.status, cache_hit=True),
                      response=response)
