"""The usage ledger: tokens, calls and cost per user, UTC day and model, from
the providers' own usage, written off the request path.

`usage_record(user_id=..., model=..., usage=...)` appends one call to this
process's buffer (resilience.telemetry.buffered: no database round trip); the
writer thread sums the buffer per (user, day, model) and adds the sums to the
stored rows with one multi-row `INSERT ... ON CONFLICT (user_id, day, model)
DO UPDATE SET n = t.n + EXCLUDED.n` every `AIGEN["USAGE_FLUSH_INTERVAL"]`
seconds, or once `USAGE_BUFFER_MAX` calls wait, and at exit, as the telemetry
rollups do: any number of workers merge into the same rows without reading
them, one statement per flush whatever the traffic. Cost is priced at the
flush from `ModelPrice` (one query per flush): prompt tokens less the cached
ones at `input`, cached ones at `cached_input`, completion at `output`, per
million. A model without a price row costs 0.

`usage_of(body_usage)` reads a usage object in OpenAI's shape
(`prompt_tokens`, `completion_tokens`, `prompt_tokens_details.cached_tokens`)
or Anthropic's (`input_tokens` without the cached ones, `output_tokens`,
`cache_read_input_tokens`, `cache_creation_input_tokens`).

On failure: a batch the database refuses is kept and retried (bounded), as
for every buffered writer; a record never breaks the call.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from django.db import connections, router, transaction

from aigen.conf import aigen_settings
from aigen.models import ModelPrice, UsageLedger
from resilience.telemetry.buffered import MAX_PARAMS, BufferedWriter

COUNTS = ("prompt_tokens", "cached_tokens", "completion_tokens", "calls")
COLUMNS = ("user_id", "day", "model", *COUNTS, "cost")
MILLION = Decimal(1_000_000)


@dataclass(frozen=True)
class TokenUsage:
    """One answer's usage; `prompt` includes `cached`."""

    prompt: int = 0
    completion: int = 0
    cached: int = 0

    @property
    def total(self) -> int:
        return self.prompt + self.completion


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def usage_of(usage: Any) -> TokenUsage | None:
    """The usage object of an answer (OpenAI's or Anthropic's shape), or None."""
    if not isinstance(usage, Mapping):
        return None
    if "input_tokens" in usage or "output_tokens" in usage:  # Anthropic's
        cached = _int(usage.get("cache_read_input_tokens"))
        prompt = _int(usage.get("input_tokens")) + cached + _int(usage.get("cache_creation_input_tokens"))
        return TokenUsage(prompt, _int(usage.get("output_tokens")), cached)
    if "prompt_tokens" not in usage and "completion_tokens" not in usage:
        return None
    details = usage.get("prompt_tokens_details")
    cached = _int(details.get("cached_tokens")) if isinstance(details, Mapping) else 0
    prompt = _int(usage.get("prompt_tokens"))
    return TokenUsage(prompt, _int(usage.get("completion_tokens")), min(cached, prompt))


def usage_cost(usage: TokenUsage, price: ModelPrice | None) -> Decimal:
    """USD for `usage` at `price` (per million tokens; cached at the cached price)."""
    if price is None:
        return Decimal(0)
    fresh = usage.prompt - usage.cached
    return (fresh * price.input + usage.cached * price.cached_input
            + usage.completion * price.output) / MILLION


def _summed(rows: Iterable[Mapping[str, Any]]) -> dict[tuple[int, date, str], list[int]]:
    sums: dict[tuple[int, date, str], list[int]] = {}
    for row in rows:
        counts = sums.setdefault((row["user_id"], row["day"], row["model"]), [0, 0, 0, 0])
        for i, name in enumerate(COUNTS):
            counts[i] += row[name]
    return sums


def _upsert_sql(connection: Any, rows: int) -> str:
    q = connection.ops.quote_name
    table = q(UsageLedger._meta.db_table)
    one_row = f"({', '.join(['%s'] * len(COLUMNS))})"
    updates = ", ".join(f"{q(name)} = t.{q(name)} + EXCLUDED.{q(name)}" for name in (*COUNTS, "cost"))
    return (f"INSERT INTO {table} AS t ({', '.join(q(c) for c in COLUMNS)}) "
            f"VALUES {', '.join([one_row] * rows)} "
            f"ON CONFLICT ({q('user_id')}, {q('day')}, {q('model')}) DO UPDATE SET {updates}")


def ledger_write(rows: list[dict[str, Any]]) -> None:
    """Add buffered calls (dicts: user_id, day, model and COUNTS) to the ledger."""
    sums = _summed(rows)
    if not sums:
        return
    prices = {p.model: p for p in ModelPrice.objects.filter(model__in={key[2] for key in sums})}
    alias = router.db_for_write(UsageLedger)
    connection = connections[alias]
    per_chunk = max(1, MAX_PARAMS // len(COLUMNS))
    items = sorted(sums.items())  # one lock order for every worker: no deadlocks
    with transaction.atomic(using=alias), connection.cursor() as cursor:
        for first in range(0, len(items), per_chunk):
            chunk = items[first:first + per_chunk]
            params: list[Any] = []
            for (user_id, day, model), (prompt, cached, completion, calls) in chunk:
                cost = usage_cost(TokenUsage(prompt, completion, cached), prices.get(model))
                params += [user_id, connection.ops.adapt_datefield_value(day), model, prompt, cached,
                           completion, calls, connection.ops.adapt_decimalfield_value(cost, 20, 8)]
            cursor.execute(_upsert_sql(connection, len(chunk)), params)


class UsageBuffer(BufferedWriter):
    """The process's unwritten usage (its own class: tests switch its `autostart`)."""


usage_buffer = UsageBuffer(
    "aigen-usage", write=ledger_write, interval=lambda: aigen_settings.USAGE_FLUSH_INTERVAL,
    max_rows=lambda: aigen_settings.USAGE_BUFFER_MAX)


def usage_record(*, user_id: int | None, model: str, usage: TokenUsage | None,
                 now: datetime | None = None) -> None:
    """Queue one answered call of `user_id` (nothing without a user)."""
    if user_id is None:
        return
    usage = usage or TokenUsage()
    day = (now or datetime.now(UTC)).astimezone(UTC).date()
    usage_buffer.record({"user_id": user_id, "day": day, "model": model[:100], "prompt_tokens": usage.prompt,
                         "cached_tokens": usage.cached, "completion_tokens": usage.completion, "calls": 1})


def usage_flush() -> int:
    """Write this process's queued usage now; how many calls were written."""
    return usage_buffer.flush()
