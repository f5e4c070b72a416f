"""Endpoint pools: the places one upstream's calls can go, and choosing one
per attempt.

An upstream with `Endpoint` rows has a pool of its enabled endpoints; one
without has a pool of one, its own base URL and credential (named "", the
rollups' "single URL" key). Every call takes the same path through
`Pool.choose`, so a single-URL upstream is the one-endpoint case, not a
second code path.

Each `Member` (an endpoint as built in this process) has its own pooled
session and async pool, its credential and its own `SharedBreaker`, shared
across workers like every breaker; a single-URL upstream's breaker keeps the
upstream's name, so its state is where it always was.

Choosing (`Pool.choose`): the strategy orders the endpoints not yet tried in
this call (then the others but the last tried; an endpoint that left an
attempt unanswered only when nothing else is left, one that had its burst of
attempts never: `avoid` and `exclude`, from the call's steps in
resilience.client.attempt); the first one that is available is taken. Unavailable means: its
credential is missing, it is cooling down (it answered 429/503 with
Retry-After), or its breaker refuses. An endpoint this process last found with no room
(resilience.client.admission: its rpm/tpm limit, or what its provider said is left) comes only
when no other can take the call. Strategies:

- `weighted` (default): weighted random by `weight`;
- `priority`: lowest `priority` first (the primary), then the fallbacks;
- `least_in_flight`: fewest calls of this process in flight to it, ties by weight;
- `score`: `score = success_rate * (1 - avg_latency_ms / 10000)` over a
  sliding window (`WINDOW` seconds), then weighted random by
  `weight * exp((score - best) / SCORE_TEMPERATURE)`: an endpoint 0.05 below
  the best (500 ms slower, or 5% more failures) gets e^-5 = 0.7% of its
  weighted share. An endpoint with no calls in the window scores as the best
  (so it is tried again and its score relearned).

When every endpoint is out (open breaker or cooling) and more than
`max_ejection_percent` of them are, the one back soonest is used anyway
(without its breaker's admission); at 100 all may be out and the call fails
with `BreakerOpen`, its `retry_after` the earliest return.

A single-URL upstream is never cooled down: its callers get the 429/503 as
they always did (its breaker still counts 5xx).

Shared state, cheap on the healthy path: cooldowns are cache keys with the
asked TTL (`pool:<upstream>:cool:<endpoint>`), read for all endpoints in one
`get_many` at most every `recheck` seconds per process (a process sets its
own at once); the score window's counts are added up in process and pushed
to Redis (one hash per 10 s bucket) with the window read back in the same
pipeline, at most once per `SYNC_SECONDS` per process. With Redis down (or
not configured) both live in process memory: cooldowns and scores are then
per process. So another worker learns of a cooldown within `recheck`
seconds (0.25), of score changes within about a second. The same read brings
the limits other workers learned from a provider's headers
(resilience.client.quota's markers, also read when the pool is built).

`snapshot(upstream)` reads every endpoint's state, weight, score, error rate
and p95 for the API, the admin, the dashboard and `manage.py upstreams`.
"""
from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import requests
from django.db import OperationalError, ProgrammingError, router, transaction

from resilience.cache import cache_is_shared, default_cache
from resilience.cache.engine import NOT_SERVED
from resilience.client.accounts import AccountSpec, TokenManager, account_manager, account_state
from resilience.client.asend import AsyncPool
from resilience.client.breaker import CircuitOpen, SharedBreaker, StoreNeeded, breaker_name
from resilience.client.credentials import Credentials, Kind
from resilience.client.policy import Policy
from resilience.client.quota import Quota, learned_apply, learned_read
from resilience.client.send import session_build
from resilience.models import Endpoint
from resilience.telemetry.selectors import upstream_stats

logger = logging.getLogger(__name__)

#: Seconds of calls the score is computed over, and the bucket it is kept in.
WINDOW = 60
BUCKET = 10
#: Seconds between pushes of this process's counts to Redis (and reads of the window).
SYNC_SECONDS = 1.0
#: The score strategy's softness (see the module docstring).
SCORE_TEMPERATURE = 0.01

STRATEGIES = ("weighted", "priority", "least_in_flight", "score")


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    """An endpoint as configured (a row, or the upstream's own URL)."""

    name: str
    base_url: str
    auth_env_var: str
    weight: int = 1
    priority: int = 0
    model: str = ""
    pool_size: int | None = None
    wire_format: str = "openai"  # "anthropic": its credential goes as x-api-key
    #: An OAuth2 account (resilience.client.accounts) in place of the variable.
    account: AccountSpec | None = None
    #: Requests and tokens per minute its account allows (None: unlimited; resilience.client.quota).
    rpm_limit: int | None = None
    tpm_limit: int | None = None

    @classmethod
    def implicit(cls, policy: Policy) -> EndpointSpec:
        return cls("", policy.base_url, policy.auth_env_var)

    @classmethod
    def of(cls, row: Any, upstream: str = "") -> EndpointSpec:
        account = None
        if getattr(row, "is_account", False):
            account = AccountSpec.of(row, upstream or str(row.upstream_id))
        return cls(row.name, row.base_url.rstrip("/"), row.auth_env_var, row.weight, row.priority,
                   row.model, row.pool_size, row.wire_format, account, row.rpm_limit, row.tpm_limit)


def cooldown_key(upstream: str, endpoint: str) -> str:
    return f"pool:{upstream}:cool:{endpoint}"


class Member:
    """One endpoint as built in this process (see the module docstring)."""

    __slots__ = ("account", "apool", "base_url", "breaker", "cool_until", "credentials", "full_until",
                 "in_flight", "model", "name", "policy", "priority", "quota", "session", "spec", "weight")

    def __init__(self, policy: Policy, spec: EndpointSpec, breaker: SharedBreaker | None) -> None:
        self.spec = spec
        self.name = spec.name
        self.base_url = spec.base_url
        self.weight = spec.weight
        self.priority = spec.priority
        self.model = spec.model
        # The policy as this endpoint sees it: its URL, credential variable and pool size.
        self.policy = policy if not spec.name else replace(
            policy, base_url=spec.base_url, auth_env_var=spec.auth_env_var or policy.auth_env_var,
            pool_size=spec.pool_size or policy.pool_size)
        if spec.wire_format == "anthropic" and self.policy.auth_env_var:
            # Anthropic's API takes its key in x-api-key, whatever the upstream's kind says.
            self.policy = replace(self.policy, auth_kind=Kind.HEADER, auth_name="x-api-key")
        self.session: requests.Session = session_build(self.policy)
        self.apool = AsyncPool(self.policy)
        self.account: TokenManager | None = account_manager(spec.account) if spec.account else None
        self.credentials = (Credentials.for_account(self.policy.name, spec.name, "") if self.account
                            else Credentials.for_policy(self.policy))
        self.breaker = breaker
        self.in_flight = 0  # this process's calls in flight (approximate under threads: a heuristic)
        self.cool_until = 0.0  # wall clock
        # Its rpm/tpm room, shared across workers (resilience.client.quota), and until when
        # (monotonic) this process last found it full: routing skips it meanwhile.
        self.quota = Quota(policy.name, spec.name, rpm=spec.rpm_limit, tpm=spec.tpm_limit)
        self.full_until = 0.0

    def credentials_now(self, budget: float | None = None) -> Credentials:
        """The credential, read again while it is still missing; an
        account's refresh is waited for at most `budget` seconds."""
        if self.account is not None:  # a token refreshed by the gateway (resilience.client.accounts)
            token = self.account.token_now(budget)
            if token != self.credentials.secret:
                self.credentials = Credentials.for_account(self.policy.name, self.name, token,
                                                           reason=self.account.reason)
            return self.credentials
        credentials = self.credentials
        if credentials.needed and not credentials.secret:
            credentials = self.credentials = Credentials.for_policy(self.policy)
        return credentials

    def credentials_ready(self) -> Credentials | None:
        """The credential when it is at hand without I/O; None for an
        account whose token is due (then `credentials_now`, off the loop)."""
        if self.account is None:
            return self.credentials_now()
        token = self.account.token_held()
        if not token:
            return None
        if token != self.credentials.secret:
            self.credentials = Credentials.for_account(self.policy.name, self.name, token)
        return self.credentials

    def credentialed(self) -> bool:
        """Whether it looks able to send its credential (memory only)."""
        if self.account is not None:
            return self.account.looks_usable()
        return not (self.credentials.needed and not self.credentials.secret)

    def close(self) -> None:
        self.session.close()
        self.apool.close()


@dataclass(frozen=True, slots=True)
class Choice:
    """The endpoint for one attempt. `admission` is its breaker's grant (None
    without a breaker, or when kept in rotation against an open breaker:
    `forced`)."""

    member: Member
    admission: Any
    forced: bool = False

    @property
    def state(self) -> str:
        if self.forced:
            return "open"
        return self.admission.state if self.admission is not None else ""


@dataclass(frozen=True, slots=True)
class Unavailable:
    """No endpoint can take the attempt: `retry_after` is the soonest one is
    back (None when none is out, e.g. only missing credentials), `missing`
    the first missing credential met."""

    retry_after: float | None
    missing: Credentials | None


class Window:
    """The score window's counts: (calls, successes, latency ms summed) per
    endpoint, in `BUCKET`-second buckets, shared through Redis when it is up."""

    clock = staticmethod(time.time)

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self._lock = threading.Lock()
        self._pending: dict[str, list[float]] = {}
        self._local: dict[int, dict[str, list[float]]] = {}  # bucket -> counts (no Redis)
        self._totals: dict[str, list[float]] = {}
        self._synced = 0.0

    def add(self, name: str, ok: bool, latency_ms: float) -> None:
        with self._lock:
            counts = self._pending.get(name)
            if counts is None:
                counts = self._pending[name] = [0, 0, 0.0]
            counts[0] += 1
            counts[1] += ok
            counts[2] += latency_ms

    def totals(self, *, in_memory: bool = False) -> dict[str, list[float]]:
        """The window's counts per endpoint: the last read plus what this
        process counted since (`in_memory`: `StoreNeeded` when a sync is due)."""
        now = time.monotonic()
        if now - self._synced >= SYNC_SECONDS:
            if in_memory:
                raise StoreNeeded(self.upstream)
            self._synced = now
            self.sync()
        with self._lock:
            merged = {name: list(counts) for name, counts in self._totals.items()}
            for name, counts in self._pending.items():
                into = merged.setdefault(name, [0, 0, 0.0])
                for i in range(3):
                    into[i] += counts[i]
        return merged

    def _key(self, bucket: int) -> str:
        return f"pool:{self.upstream}:stats:{bucket}"

    def sync(self) -> None:
        """Push pending counts and read the window back: one pipeline on
        Redis; in process memory when Redis does not serve."""
        with self._lock:
            pending, self._pending = self._pending, {}
        now = self.clock()
        current = int(now // BUCKET) * BUCKET
        buckets = [current - BUCKET * i for i in range(WINDOW // BUCKET)]
        store = default_cache()
        engine = getattr(store, "engine", None)
        read = None
        if engine is not None and cache_is_shared(store):
            def on_redis(redis: Any) -> Any:
                client = redis.client.get_client(write=True)
                pipe = client.pipeline(transaction=False)
                key = str(redis.client.make_key(self._key(current)))
                for name, (calls, oks, ms) in pending.items():
                    pipe.hincrby(key, f"{name}|n", int(calls))
                    pipe.hincrby(key, f"{name}|ok", int(oks))
                    pipe.hincrbyfloat(key, f"{name}|ms", float(ms))
                if pending:
                    pipe.expire(key, WINDOW + BUCKET)
                for bucket in buckets:
                    pipe.hgetall(str(redis.client.make_key(self._key(bucket))))
                return pipe.execute()[-len(buckets):]

            result = engine.on_redis(on_redis)
            read = None if result is NOT_SERVED else result
        totals: dict[str, list[float]] = {}
        if read is not None:
            for fields in read:
                for field, value in fields.items():
                    name, _, part = (field.decode() if isinstance(field, bytes) else field).rpartition("|")
                    counts = totals.setdefault(name, [0, 0, 0.0])
                    counts[{"n": 0, "ok": 1, "ms": 2}[part]] += float(value)
        else:
            with self._lock:
                bucket_counts = self._local.setdefault(current, {})
                for name, counts in pending.items():
                    into = bucket_counts.setdefault(name, [0, 0, 0.0])
                    for i in range(3):
                        into[i] += counts[i]
                for old in [b for b in self._local if b < buckets[-1]]:
                    del self._local[old]
                for bucket in buckets:
                    for name, counts in self._local.get(bucket, {}).items():
                        into = totals.setdefault(name, [0, 0, 0.0])
                        for i in range(3):
                            into[i] += counts[i]
        with self._lock:
            self._totals = totals


def score_of(counts: list[float] | None) -> float | None:
    """The seed's formula; None without calls in the window."""
    if not counts or counts[0] <= 0:
        return None
    success_rate = counts[1] / counts[0]
    average_ms = counts[2] / counts[0]
    return max(0.0, success_rate * (1 - average_ms / 10000))


class Pool:
    """The endpoints of one upstream as built in this process, and the choice
    of one per attempt (see the module docstring)."""

    #: Seconds between reads of the shared cooldowns.
    recheck = 0.25
    #: Test seams.
    clock = staticmethod(time.time)
    random = random.Random()

    def __init__(self, policy: Policy, specs: Iterable[EndpointSpec],
                 breaker_for: Callable[[str], SharedBreaker | None]) -> None:
        self.upstream = policy.name
        self.strategy = policy.endpoint_strategy if policy.endpoint_strategy in STRATEGIES else "weighted"
        self.max_ejection_percent = policy.max_ejection_percent
        self.retry_after_max = policy.retry_after_max
        specs = list(specs) or [EndpointSpec.implicit(policy)]
        self.members: tuple[Member, ...] = tuple(
            Member(policy, spec, breaker_for(breaker_name(policy.name, spec.name))) for spec in specs)
        self.by_priority = tuple(sorted(self.members, key=lambda m: (m.priority, m.name)))
        self.single = len(self.members) == 1
        self.window = Window(policy.name)
        self._cool_keys = {cooldown_key(policy.name, m.name): m for m in self.members}
        self._cool_read = 0.0
        self._cool_lock = threading.Lock()
        # Limits another worker learned from the provider's headers (resilience.client.quota): read
        # with the shared cooldowns (the first choice reads them), a single URL's with the policy's load.
        self._learn_keys = {m.quota.learned_key: m.quota for m in self.members}
        if self.single:
            learned_read(self._learn_keys)

    @property
    def first(self) -> Member:
        return self.members[0]

    # -- choosing ----------------------------------------------------------------------------
    def choose(self, tried: tuple[Member, ...] = (), *, avoid: frozenset[Member] = frozenset(),
               exclude: frozenset[Member] = frozenset(), in_memory: bool = False) -> Choice | Unavailable:
        """The endpoint for the next attempt: one not in `tried` if any is
        available, else any available one but the last tried (a retry
        "then anywhere"), else `Unavailable`. Endpoints in `avoid` (they
        left an attempt unanswered) come only when no other is available;
        those in `exclude` never. `in_memory`: from process memory only,
        else `StoreNeeded` before anything changed (a due read of the
        cooldowns, the score window or a breaker, a probe slot): the async
        client then chooses again off the event loop."""
        if not self.single and time.monotonic() - self._cool_read >= self.recheck:  # a single URL never cools
            if in_memory:  # the refresh takes a lock a reading thread holds: never on the loop
                raise StoreNeeded(self.upstream)
            self._refresh_cooldowns()
        if self.single:
            return self._first_available(list(self.members), in_memory)
        allowed = [m for m in self.members if m not in exclude]
        preferred = [m for m in allowed if m not in avoid]
        for group in (preferred, allowed):
            candidates = [m for m in group if m not in tried]
            if not candidates and tried:
                candidates = [m for m in group if m is not tried[-1]]
            if not candidates:
                continue
            found = self._first_available(candidates, in_memory)
            if isinstance(found, Choice) or group is allowed:
                return found
        return self._first_available([], in_memory)

    def _first_available(self, candidates: list[Member], in_memory: bool = False) -> Choice | Unavailable:
        """The first of `candidates` in the strategy's order that can take an
        attempt (see the module docstring); one this process last found with
        no room (its rpm/tpm limit) only when no other can."""
        moment = time.monotonic()
        full = [m for m in candidates if m.full_until > moment]
        if full and len(full) < len(candidates):
            found = self._available([m for m in candidates if m.full_until <= moment], in_memory)
            if isinstance(found, Choice):
                return found
            candidates = sorted(full, key=lambda m: m.full_until)
        return self._available(candidates, in_memory)

    def _available(self, candidates: list[Member], in_memory: bool = False) -> Choice | Unavailable:
        now = self.clock()
        if in_memory and any(m.breaker is not None and m.cool_until <= now and m.breaker.store_due()
                             for m in candidates):
            # Asked of every candidate before one is picked: which endpoint the pick lands on must
            # not decide whether the choice is made again elsewhere (that would skew the weights).
            raise StoreNeeded(self.upstream)
        out: list[tuple[float, Member]] = []
        missing = None
        while candidates:
            member = self._pick(candidates, in_memory)
            candidates.remove(member)
            if member.account is None:
                credentials = member.credentials_now()
                if credentials.needed and not credentials.secret:
                    missing = missing or credentials
                    continue
            elif not member.credentialed():  # memory only: a refresh is never made while choosing
                missing = missing or Credentials.for_account(self.upstream, member.name, "",
                                                             reason=member.account.reason)
                continue
            if member.cool_until > now:
                out.append((member.cool_until - now, member))
                continue
            breaker = member.breaker
            if breaker is None:
                return Choice(member, None)
            try:
                return Choice(member, breaker.admit(in_memory=in_memory))
            except CircuitOpen as err:
                out.append((err.retry_after, member))
        if not out:
            return Unavailable(None, missing)
        out.sort(key=lambda pair: pair[0])
        allowed_out = len(self.members) * self.max_ejection_percent // 100
        if len(out) > allowed_out:  # more are out than may be: the one back soonest stays in rotation
            return Choice(out[0][1], None, forced=True)
        return Unavailable(out[0][0], missing)

    def _pick(self, candidates: list[Member], in_memory: bool = False) -> Member:
        if len(candidates) == 1:
            return candidates[0]
        strategy = self.strategy
        if strategy == "priority":
            return min(candidates, key=lambda m: (m.priority, m.name))
        if strategy == "least_in_flight":
            fewest = min(m.in_flight for m in candidates)
            candidates = [m for m in candidates if m.in_flight == fewest]
            if len(candidates) == 1:
                return candidates[0]
            return self._weighted(candidates, [m.weight for m in candidates])
        if strategy == "score":
            totals = self.window.totals(in_memory=in_memory)
            scores = [score_of(totals.get(m.name)) for m in candidates]
            known = [s for s in scores if s is not None]
            best = max(known) if known else 1.0
            weights = [m.weight * math.exp(((best if s is None else s) - best) / SCORE_TEMPERATURE)
                       for m, s in zip(candidates, scores, strict=True)]
            return self._weighted(candidates, weights)
        return self._weighted(candidates, [m.weight for m in candidates])

    def _weighted(self, candidates: list[Member], weights: list[float]) -> Member:
        total = sum(weights)
        if total <= 0:  # only weight-0 endpoints left: any of them
            return candidates[self.random.randrange(len(candidates))]
        point = self.random.random() * total
        for member, weight in zip(candidates, weights, strict=True):
            point -= weight
            if point < 0:
                return member
        return candidates[-1]

    def has_alternative(self, member: Member, *, avoid: frozenset[Member] = frozenset()) -> bool:
        """Whether another endpoint, not in `avoid`, looks available now (from
        process memory: no round trip, no probe slot taken). Without one, a
        failed attempt's retries stay on `member`, with the policy's backoff."""
        if self.single:
            return False
        now = self.clock()
        for other in self.members:
            if other is member or other in avoid or other.cool_until > now:
                continue
            if not other.credentialed():
                continue
            if other.breaker is None or not other.breaker.looks_open():
                return True
        return False

    # -- what attempts tell ------------------------------------------------------------------
    def observe(self, member: Member, *, ok: bool, latency_ms: float) -> None:
        """Count one attempt in the score window (in process; pushed later)."""
        if self.strategy == "score" and not self.single:
            self.window.add(member.name, ok, latency_ms)

    def cool(self, member: Member, seconds: float) -> None:
        """Take `member` out of rotation for `seconds` (capped by the
        policy's `retry_after_max`), in every worker."""
        seconds = min(seconds, self.retry_after_max)
        if seconds <= 0:
            return
        until = self.clock() + seconds
        if until <= member.cool_until:
            return
        member.cool_until = until
        default_cache().set(cooldown_key(self.upstream, member.name), until, timeout=math.ceil(seconds))

    def reread_due(self) -> None:
        """Re-read what `choose(in_memory=True)` found due: the shared cooldowns
        and every endpoint's breaker snapshot that is due for it (round trips:
        call it off the event loop), so the next choices run from memory."""
        if not self.single and time.monotonic() - self._cool_read >= self.recheck:
            self._refresh_cooldowns()
        for member in self.members:
            if member.breaker is not None:
                member.breaker.reread_due()

    def _refresh_cooldowns(self) -> None:
        """Read the shared cooldowns. Attempts run on several threads at once:
        one reads while the others that found the last read stale wait for it
        (at most the cache's socket timeout), so no attempt chooses from a
        read older than `recheck` while another is still under way."""
        with self._cool_lock:
            started = time.monotonic()
            if started - self._cool_read < self.recheck:  # read by another thread while this one waited
                return
            found = default_cache().get_many([*self._cool_keys, *self._learn_keys])
            learned_apply(self._learn_keys, found)
            for key, member in self._cool_keys.items():
                until = found.get(key)
                if until is not None and until > member.cool_until:
                    member.cool_until = until
            self._cool_read = started

    def close(self) -> None:
        for member in self.members:
            member.close()


# -- reading state for displays ------------------------------------------------------------------
def pool_specs(row: Any) -> list[EndpointSpec]:
    """The enabled endpoints of an Upstream row (empty: its own URL).

    A database whose schema predates endpoints (new code deployed before its
    migration ran) has no endpoint table: the upstream then keeps calling its
    own base URL, as it did, and a warning says so."""
    alias = router.db_for_read(Endpoint)
    try:
        with transaction.atomic(using=alias):  # a savepoint: a failed query leaves no broken transaction
            rows = list(Endpoint.objects.using(alias).filter(upstream_id=row.pk, enabled=True))
    except (OperationalError, ProgrammingError) as err:
        logger.warning("upstream %s: endpoints unreadable (%s: run the migrations); calling its base URL",
                       row.name, type(err).__name__)
        return []
    return [EndpointSpec.of(endpoint, row.name) for endpoint in rows]


def snapshot(upstream: Any, *, window_seconds: int = 300) -> dict[str, Any]:
    """Every endpoint of `upstream` (an Upstream row) with its live state,
    for displays: the upstream API, the admin, the dashboard and
    `manage.py upstreams`. Reads the shared breaker state, cooldowns and
    score window, and the rollups (error rate, p95) of the last
    `window_seconds`; no secret, only the variable names.

    `state` is the upstream's view: `open` when every enabled endpoint is
    out (breaker open or cooling down), else `closed`; each endpoint has its
    own `state` (closed, open, half-open, disabled) and `cooling_for`."""
    rows = list(upstream.endpoints.all())
    accounts = {row.name: account_state(row) for row in rows}
    implicit = not rows
    totals = Window(upstream.name).totals()  # shared while Redis serves; else this process's (none)
    cool_keys = [cooldown_key(upstream.name, "" if implicit else row.name) for row in rows or [None]]
    cooling = default_cache().get_many(cool_keys)
    now = Pool.clock()
    endpoints = []
    specs: list[tuple[EndpointSpec, bool]] = [(EndpointSpec.of(row), row.enabled) for row in rows] or [
        (EndpointSpec(name="", base_url=upstream.base_url, auth_env_var=upstream.auth_env_var), True)]
    for spec, enabled in specs:
        name = breaker_name(upstream.name, spec.name)
        if not upstream.breaker_enabled:
            breaker = {"state": "disabled", "failures": 0, "retry_after": None}
        else:
            breaker = SharedBreaker.status_of(name, fail_max=upstream.breaker_fail_max,
                                              reset_timeout=upstream.breaker_reset_timeout,
                                              probe_interval=upstream.breaker_probe_interval)
        until = cooling.get(cooldown_key(upstream.name, spec.name)) or 0.0
        stats = upstream_stats(name=upstream.name, window=timedelta(seconds=window_seconds),
                               endpoint=spec.name)
        score = score_of(totals.get(spec.name))
        endpoints.append({
            "name": spec.name, "base_url": spec.base_url,
            "auth_env_var": spec.auth_env_var or upstream.auth_env_var,
            "enabled": enabled, "weight": spec.weight, "priority": spec.priority, "model": spec.model,
            "pool_size": spec.pool_size, "rpm_limit": spec.rpm_limit, "tpm_limit": spec.tpm_limit,
            "state": breaker["state"] if enabled else "disabled",
            "failures": breaker["failures"], "retry_after": breaker["retry_after"],
            "cooling_for": round(until - now, 3) if until > now else 0.0,
            "score": None if score is None else round(score, 4),
            "calls": stats["calls"], "error_rate": stats["error_rate"], "p95_ms": stats["p95_ms"],
            "account": accounts.get(spec.name),
        })
    live = [e for e in endpoints if e["enabled"]]
    all_out = bool(live) and all(e["state"] == "open" or e["cooling_for"] > 0 for e in live)
    return {"strategy": upstream.endpoint_strategy, "max_ejection_percent": upstream.max_ejection_percent,
            "state": "open" if all_out else "closed", "window_seconds": window_seconds,
            "endpoints": endpoints}


def endpoint_states(upstream: Any) -> list[dict[str, Any]]:
    """Every endpoint of `upstream` (an Upstream row; the implicit one when it
    has none) as it really is now, from the shared state alone (no rollups):
    name, enabled, its breaker's name, state (closed, open, half-open,
    disabled), failures, retry_after, cooling_for, and `forced` ({until, by,
    reason}) while an operator's forced opening holds. For the breaker
    controls' answers and the alert rules; one `get_many` per breaker."""
    rows = list(upstream.endpoints.all())
    specs = [(row.name, row.enabled) for row in rows] or [("", True)]
    cooling = default_cache().get_many([cooldown_key(upstream.name, name) for name, _ in specs])
    now = Pool.clock()
    states = []
    for name, enabled in specs:
        breaker = breaker_name(upstream.name, name)
        if upstream.breaker_enabled:
            status = SharedBreaker.status_of(breaker, fail_max=upstream.breaker_fail_max,
                                             reset_timeout=upstream.breaker_reset_timeout)
            forced = SharedBreaker.forced_status(breaker)
        else:
            status, forced = {"state": "disabled", "failures": 0, "retry_after": None}, None
        until = cooling.get(cooldown_key(upstream.name, name)) or 0.0
        states.append({"name": name, "breaker": breaker, "enabled": enabled,
                       "state": status["state"] if enabled else "disabled",
                       "breaker_state": status["state"], "failures": status["failures"],
                       "retry_after": status["retry_after"],
                       "cooling_for": round(until - now, 3) if until > now else 0.0, "forced": forced})
    return states

