"""The admission step of the resilient client: room on a limited endpoint before an attempt is sent.

`admitted(pool, attempt)` runs before each attempt on an endpoint whose quota is active (an
`rpm_limit` or `tpm_limit`, or limits its provider announced: resilience.client.quota); any other
endpoint costs nothing here. A request and the call's tokens (its prompt estimate plus `max_tokens`,
or `QUOTA_DEFAULT_MAX_TOKENS`) come from this process's lease on the endpoint when it holds one with
room (no round trip; a caller that already waited never takes one), else it yields an `Admit`
command (one Redis round trip, one Lua script) that reserves them on the attempt's endpoint, and
far from its limits a lease of up to `QUOTA_LEASE` requests for the process's next calls.
Without room there it marks the endpoint full in this process (routing skips it until room is due:
`Pool.choose`) and moves to another endpoint that may have room; with room nowhere the call waits in
the upstream's priority queue (`high` > `normal` > `low`, FIFO within one; the priority is the call
context's `current_priority`), sleeping until room is due (at most `QUOTA_POLL_MAX` between looks),
for at most its deadline. Past it: `NoRoom` (503 with Retry-After; nothing was sent, the breaker is
not told).

After the answer `settled()` hands the quota what the answer taught: the provider's
`x-ratelimit-*` headers, a 429, the tokens the call really cost (its usage; a supervised
stream's final usage when it closes, or its prompt alone when it was closed before anything of
it was read).
Wait per priority and the callers waiting are metrics (resilience.telemetry.metrics).
Used by resilience.client.attempt only.
"""
from __future__ import annotations

import time
from collections.abc import Generator
from typing import Any

from resilience import exceptions as errors
from resilience.client.context import PRIORITIES, current_priority
from resilience.client.endpoints import Choice, Member, Pool
from resilience.client.quota import Grant, Reservation, call_id, prompt_tokens, tokens_needed, usage_total
from resilience.client.spec import RequestSpec
from resilience.client.steps import Admit, Command, Sleep
from resilience.conf import resilience_settings
from resilience.telemetry.metrics import ADMISSION_REFUSED, ADMISSION_WAIT_SECONDS, ADMISSION_WAITING


class Ticket:
    """One call's place in admission: its name, priority, tokens and when it began waiting."""

    __slots__ = ("id", "priority", "prompt", "rank", "reservations", "tokens", "waiting_since")

    def __init__(self, spec: RequestSpec, body: dict[str, Any] | None) -> None:
        self.id = call_id()
        priority = current_priority.get()
        self.priority = priority if priority in PRIORITIES else "normal"  # a metric label: the three only
        self.rank = PRIORITIES.index(self.priority)
        raw = spec.data if spec.json is None else None
        prompt = prompt_tokens(body, raw)  # the body serialised once for both counts
        self.tokens = tokens_needed(body, raw, resilience_settings.QUOTA_DEFAULT_MAX_TOKENS, prompt=prompt)
        self.prompt = min(prompt, self.tokens)
        self.reservations = 0
        self.waiting_since = 0.0


Admitted = tuple[Choice, Reservation | None] | errors.NoRoom


def admitted(pool: Pool, choice: Choice, ticket: Ticket, *, deadline: float,
             movable: bool = True) -> Generator[Command, Any, Admitted]:
    """Room for the next attempt: (the choice, possibly moved to another endpoint, and its
    reservation), or `NoRoom` once the deadline (monotonic) leaves no time to wait. `movable`
    False keeps the call on its endpoint (a stream's continuation pinned there)."""
    # Counted from admission, held a margin longer: the provider counts from the request's arrival.
    window = float(resilience_settings.QUOTA_WINDOW_SECONDS) + float(resilience_settings.QUOTA_MARGIN_SECONDS)
    slices = int(resilience_settings.QUOTA_SLICES)
    lease = int(resilience_settings.QUOTA_LEASE)
    lease_seconds = float(resilience_settings.QUOTA_MARGIN_SECONDS) / 2
    began = time.monotonic()
    try:
        while True:
            member = choice.member
            quota = member.quota
            if not quota.active:
                return choice, None
            now = time.monotonic()
            other = _roomier(pool, choice, now) if movable and member.full_until > now else None
            if other is not None:
                choice = other
                continue
            counted = quota.counts_tokens
            tokens = ticket.tokens if counted else 0
            leased = quota.leased(tokens) if lease > 1 and not ticket.waiting_since else None
            if leased is not None:
                _observe(ticket, now - began)
                lease_id, grant = leased
                return choice, Reservation(quota, lease_id, tokens, grant, ticket.prompt if counted else 0)
            ticket.reservations += 1
            grant: Grant = yield Admit(quota, tokens, ticket.id, f"{ticket.id}.{ticket.reservations}",
                                       ticket.rank, window, slices, lease, lease_seconds)
            now = time.monotonic()
            if grant.admitted:
                _observe(ticket, now - began)
                return choice, Reservation(quota, f"{ticket.id}.{ticket.reservations}", tokens, grant,
                                           ticket.prompt if counted else 0)
            if not grant.behind:
                member.full_until = now + grant.wait
                other = _roomier(pool, choice, now) if movable else None
                if other is not None:
                    choice = other
                    continue
            if not ticket.waiting_since:
                ticket.waiting_since = now
                ADMISSION_WAITING.labels(ticket.priority).inc()
            left = deadline - now
            if left <= 0 or (grant.wait > left and not grant.behind):
                quota.leave(ticket.id)
                ADMISSION_REFUSED.labels(ticket.priority).inc()
                _observe(ticket, now - began)
                return errors.NoRoom(
                    f"{pool.upstream}: no endpoint has room (rpm/tpm limits) before the call's deadline",
                    upstream=pool.upstream, retry_after=max(1.0, grant.wait))
            yield Sleep(min(grant.wait, left, float(resilience_settings.QUOTA_POLL_MAX)))
    finally:
        if ticket.waiting_since:
            ADMISSION_WAITING.labels(ticket.priority).dec()
            ticket.waiting_since = 0.0


def _roomier(pool: Pool, choice: Choice, now: float) -> Choice | None:
    """Another endpoint this process does not know to be full, if the pool has one available."""
    if pool.single:
        return None
    full = frozenset(m for m in pool.members if m.full_until > now)
    if len(full) == len(pool.members):
        return None
    other = pool.choose(exclude=full)
    if not isinstance(other, Choice) or other.member is choice.member or other.forced:
        return None
    _release_probe(choice)
    return other


def _release_probe(choice: Choice) -> None:
    admission, breaker = choice.admission, choice.member.breaker
    if admission is not None and admission.probe and breaker is not None:
        breaker.storage.release_probe()


def _observe(ticket: Ticket, waited: float) -> None:
    ADMISSION_WAIT_SECONDS.labels(ticket.priority).observe(waited)


def settled(held: Reservation | None, member: Member, response: Any, *, stream: bool) -> None:
    """Tell the endpoint's quota what an answer taught (its headers, a 429, its usage)."""
    quota = member.quota
    headers = response.headers
    if response.status_code == 429 and quota.active:  # else the pool's cooldown is the answer, as before
        asked = headers.get("Retry-After", "")
        quota.refused(held, float(asked) if asked.strip().isdigit() else None)
    if not quota.active and "x-ratelimit-remaining-requests" not in headers \
            and "x-ratelimit-limit-requests" not in headers and "x-ratelimit-remaining-tokens" not in headers:
        return
    content = None if stream or response.status_code >= 400 else response.content
    quota.settle(held, headers=headers, content=content)
    if stream and held is not None and held.tokens and response.status_code < 400:
        response.when_closed(lambda: _stream_used(held, response))


def _stream_used(held: Reservation, response: Any) -> None:
    """A supervised stream's final usage corrects its reservation. Without one, a stream closed
    before anything of it was read (`stream_read` 0: its caller went away, or closed it unread)
    holds its prompt only, nothing answered; any other keeps the estimate."""
    used = usage_total(response.stream_usage)
    if used is None and response.stream_read == 0:
        used = held.prompt
    if used is not None:
        held.quota.used(held, used)
