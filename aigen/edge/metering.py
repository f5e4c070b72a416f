"""The caller's admission at the door and its usage from the answer, for the
three front doors (/v1/chat/completions, /v1/messages, /api/ai/generate).

`caller_admit(request, model=..., prompt=..., max_tokens=...)` opens the
call's `Spend` (aigen.generation.spend): past its API token's requests per
minute or token budget it raises `QuotaExceeded` (429 with `retry_after`),
which each door renders in its own shape through its error renderer. The
door settles the spend once: `answer_settle(spend, response, answer)` with
the `usage` of the answer the door parsed once (aigen.edge.errors
`provider_json`, which refuses a 200 that is not JSON before anything is
billed), the stream's final usage when a stream ends, or `billed=False` when
no answer came (the reservation is freed).

A caller whose token has no limits costs a constant here: no estimate, no
Redis, no thread hop; its settlement only queues the answer's usage for the
ledger (aigen.generation.spend).

A stream's spend is settled when its generator ends (`stream_settle`: billed
once the provider produced something for it, freed when the caller closed it
before anything was read); `spend_left_unread(settle)` settles it by
the same rule when the request ends before the generator did (the caller went
away between the answer's headers and its first byte, or mid-stream: the ASGI
handler closes what the request left in `resilience.client.context.open_streams`).

The door's throttle (aigen.edge.throttling) is checked where it always was
for a caller without limits; for a caller with limits (`caller_limited`) it
is counted by the admission script (`caller_admit(throttle=...)`), so the
door still makes one Redis round trip before the call.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from django.http import HttpRequest

from aigen.edge.throttling import GenerateThrottle
from aigen.edge.tokens import token_of
from aigen.generation.quotas import CallerLimits
from aigen.generation.spend import Spend, aspend_open, tokens_estimate
from resilience.client.context import open_streams


def caller_limited(user: Any) -> bool:
    """Whether `user`'s API token has limits: its door's throttle is then
    counted by its admission (`caller_admit(throttle=...)`), not before."""
    return CallerLimits.of(token_of(user)) is not None


async def caller_admit(request: HttpRequest, *, model: str, prompt: Any, max_tokens: Any = None,
                       throttle: GenerateThrottle | None = None) -> Spend:
    """The authenticated caller's `Spend` for one call, or `QuotaExceeded`
    (`CallerThrottled` past the door's `throttle`, counted here for a limited
    caller: one Redis round trip for both)."""
    user = request.user
    user_id = user.pk if getattr(user, "is_authenticated", False) else None
    limits = CallerLimits.of(token_of(user))
    if limits is None:  # the common case: metered only (no estimate, no Redis, no thread hop)
        return Spend(user_id=user_id, model=model)
    estimate = tokens_estimate(prompt, max_tokens=max_tokens) if limits.budget else 0
    window = throttle.window(request) if throttle is not None else None
    return await aspend_open(user_id=user_id, limits=limits, model=model, estimate=estimate, throttle=window)


async def answer_settle(spend: Spend, response: Any, answer: Any) -> None:
    """Settle `spend` from the client's complete `response`, whose body the
    door parsed once into `answer`: its `usage` when the provider answered
    this call, else (an error, the cache's copy, another caller's
    single-flight answer) the reservation is freed unbilled."""
    if response.status_code >= 400 or response.from_cache or response.shared:
        await spend.asettle(None, billed=False)
    else:
        await spend.asettle(answer.get("usage") if isinstance(answer, dict) else None)


async def stream_settle(spend: Spend, stream: Any) -> None:
    """Settle a supervised stream's `spend` when it ends: billed (its usage when the provider sent
    one) once anything of it was read from the provider; freed, unbilled, when it was closed
    before that (its caller went away or closed it unread)."""
    if stream.events_read == 0 and stream.usage is None:
        await spend.asettle(None, billed=False)
    else:
        await spend.asettle(stream.usage)


class _UnreadSpend:
    """Settles a stream's spend when its request ends before its generator did (see the module
    docstring), by the generator's own rule; a spend settled already is left as it is."""

    __slots__ = ("settle",)

    def __init__(self, settle: Callable[[], Awaitable[None]]) -> None:
        self.settle = settle

    async def aclose(self) -> None:
        await self.settle()  # once: a settled spend does nothing


def spend_left_unread(settle: Callable[[], Awaitable[None]]) -> None:
    """Have the request run `settle` (the stream generator's own rule for its spend) at its end
    if no generator settled the spend (outside a request served by the project's ASGI handler,
    nothing to do). It bills a stream the caller read part of (a caller gone after the usage
    chunk, before the generator's end: the handler's close can come first) and frees one
    never read."""
    held = open_streams.get()
    if held is not None:
        held.add(_UnreadSpend(settle))
