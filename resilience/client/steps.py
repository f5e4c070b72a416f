"""What the resilient client's steps exchange: the I/O commands they yield and the values a call ends as.

The steps (resilience.client.attempt, resilience.client.cached) are generators: where they need I/O
they yield a command (`Send`, `Sleep`, `Follow`, `Acquire`, `Admit`, `Blocking`, `OnStore`) that the
sync or async face of `UpstreamClient` performs and sends back (a failure is thrown back in). A call
ends as an `Answer`: a `Result` (what the call-log row says), the caller's response and the error
to raise. Only values and pure helpers live here: nothing in this module does I/O or fails on its own.
"""
from __future__ import annotations

from collections.abc import Callable, Generator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import httpx2
import requests
from requests.structures import CaseInsensitiveDict

from resilience import exceptions as errors
from resilience.client.bulkhead import Bulkhead
from resilience.client.credentials import Credentials
from resilience.client.endpoints import Member
from resilience.client.policy import Trace
from resilience.client.quota import Grant, Quota
from resilience.client.record import Result
from resilience.client.responses import AsyncUpstreamResponse, CacheEntry, CallMeta, UpstreamResponse
from resilience.client.spec import RequestSpec
from resilience.models import Outcome


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
class Admit:
    """Reserve room on an endpoint's quota (one Redis round trip; resilience.client.admission),
    or learn how long to wait: the face performs `quota.admit(...)` and sends back its `Grant`."""

    quota: Quota
    tokens: int
    waiter: str
    reservation: str
    rank: int
    window: float
    slices: int = 1
    lease: int = 0
    lease_seconds: float = 0.0

    def run(self) -> Grant:
        return self.quota.admit(tokens=self.tokens, waiter=self.waiter, reservation=self.reservation,
                                rank=self.rank, window=self.window, slices=self.slices, lease=self.lease,
                                lease_seconds=self.lease_seconds)


@dataclass(frozen=True, slots=True)
class Blocking:
    """Run `work` (database, token server): in the caller's thread on the
    sync face, in a worker thread on the async one (never on the loop)."""

    work: Callable[[], Any]


@dataclass(frozen=True, slots=True)
class OnStore:
    """Run `work`, which makes round trips to the shared store (a cache get or set, a due re-read
    of breakers or cooldowns, a breaker or cooldown write, a single-flight lock): in the caller's
    thread on the sync face; on the async one in a worker thread while the store is Redis, inline
    on local memory. The steps yield it only for such work: the rest of a call runs where its
    face runs, on the event loop for the async face (resilience.client.core)."""

    work: Callable[[], Any]


Command = Send | Sleep | Follow | Acquire | Admit | Blocking | OnStore
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
class Call:
    """A call as the caller made it (the face's arguments, `method` upper-cased), before the policy
    applies: what `_plan` checks and turns into a `RequestSpec` and steps."""

    method: str
    path: str
    params: Any = None
    headers: dict[str, str] | None = None
    data: Any = None
    json: Any = None
    cache: bool | None = None
    stream: bool = False
    avoid: str = ""
    endpoint: str = ""
    wire: Any = None  # a resilience.client.wires.WireBridge: the call's wire format


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
    return AsyncUpstreamResponse.from_entry(entry, lambda: httpx2.Request(spec.method, spec.full_url()), meta)
