"""One call's spend: the caller's admission (aigen.generation.quotas) and
its usage (aigen.generation.ledger), opened before the call and settled once
from the provider's answer.

    spend = await aspend_open(user=..., token=..., model=..., estimate=...)  # or QuotaExceeded
    ...the call...
    await spend.asettle(answer_usage)      # once; later calls do nothing

A caller without limits is only metered: no Redis, no thread hop. An answer
without usage (a stream whose caller did not ask for it) keeps the reserved
estimate as spent against the budget and is counted in the ledger as a call
with no tokens: the ledger holds what providers reported, nothing guessed.
"""
from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass
from typing import Any

from asgiref.sync import sync_to_async

from aigen.conf import aigen_settings
from aigen.generation.ledger import TokenUsage, usage_of, usage_record
from aigen.generation.quotas import CallerLimits, Reservation, ThrottleWindow, quota_admit, quota_settle


def tokens_estimate(prompt: Any, *, max_tokens: Any = None) -> int:
    """What a call may cost: its prompt at about four characters a token
    (as the gateway's other estimates) plus `max_tokens`, or the
    `QUOTA_DEFAULT_MAX_TOKENS` default when the request names none."""
    text = prompt if isinstance(prompt, str) else json.dumps(prompt, ensure_ascii=False, default=str)
    named = isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens > 0
    limit = max_tokens if named else aigen_settings.QUOTA_DEFAULT_MAX_TOKENS
    return math.ceil(len(text) / 4) + int(limit)


#: Makes a spend's settle once-only across threads (held for a flag's check and set).
_SETTLING = threading.Lock()


@dataclass
class Spend:
    """An admitted call (see the module docstring)."""

    user_id: int | None
    model: str
    reservation: Reservation | None = None
    done: bool = False

    def _usage(self, usage: Any) -> TokenUsage | None:
        return usage if isinstance(usage, TokenUsage) else usage_of(usage)

    def settle(self, usage: Any, *, billed: bool = True) -> None:
        """Count the answer's `usage` (a usage object or TokenUsage, None when
        the answer had none); `billed=False` for a call that reached no
        provider (a cache hit, a failure): it frees the reservation only."""
        with _SETTLING:  # the generator's settle and the request's end may race in two threads
            if self.done:
                return
            self.done = True
        tokens = self._usage(usage)
        if self.reservation is not None:
            quota_settle(self.reservation, used=tokens.total if tokens else (None if billed else 0))
        if billed:
            usage_record(user_id=self.user_id, model=self.model, usage=tokens)

    async def asettle(self, usage: Any, *, billed: bool = True) -> None:
        """`settle` for async code: a thread hop only when a budget is held in Redis."""
        if self.reservation is not None and self.reservation.limits.budget and not self.done:
            await sync_to_async(self.settle, thread_sensitive=False)(usage, billed=billed)
        else:
            self.settle(usage, billed=billed)


def spend_open(*, user_id: int | None, limits: CallerLimits | None, model: str, estimate: int,
               throttle: ThrottleWindow | None = None) -> Spend:
    """Admit one call (raises `QuotaExceeded`) and return its `Spend`; a
    limited caller's `throttle` window is counted by its admission."""
    reservation = None
    if user_id is not None and limits is not None:
        reservation = quota_admit(user_id=user_id, limits=limits, estimate=estimate, throttle=throttle)
    return Spend(user_id=user_id, model=model, reservation=reservation)


async def aspend_open(*, user_id: int | None, limits: CallerLimits | None, model: str,
                      estimate: int, throttle: ThrottleWindow | None = None) -> Spend:
    """`spend_open` for async code: the admission runs off the loop, only for a limited caller."""
    if user_id is None or limits is None:
        return Spend(user_id=user_id, model=model)
    admit = sync_to_async(spend_open, thread_sensitive=False)  # the shared pool: no thread per request
    return await admit(user_id=user_id, limits=limits, model=model, estimate=estimate, throttle=throttle)
