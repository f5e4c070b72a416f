"""Caller admission benchmark (aigen.generation.quotas): what an API token's
limits add to a call, side by side in one run, against the one Redis round
trip every call already makes at the door (the generate throttle's
INCR + EXPIRE pipeline, `incr_window`).

    .venv/bin/python -m bench.bench_caller_quotas [--n N]

Contenders, per call:
- no limits: the call is only metered (its usage queued for the ledger; no Redis);
- rpm only: one admission script (EVALSHA), nothing to settle;
- rpm + budget: the admission script before the call and the settle script
  after it (two round trips, one before the call);
- the same in process memory (no Redis).
Limits are set high enough that nothing is refused.
"""
from __future__ import annotations

import argparse
import os
import time

from bench.common import django_setup, fmt_time, paired_ratio, table


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=300)
    args = parser.parse_args()
    django_setup(REDIS_URL=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14"))
    from django.core.cache import cache

    from aigen.generation.ledger import UsageBuffer, usage_buffer
    from aigen.generation.quotas import CallerLimits, MemoryQuotas, Reservation
    from aigen.generation.spend import spend_open

    UsageBuffer.autostart = False  # the ledger's writes are off the call path: not measured here
    assert getattr(cache, "shared", False), "the benchmark needs Redis (BENCH_REDIS_URL)"
    usage = {"prompt_tokens": 120, "completion_tokens": 80}
    user_id = 10**9 + os.getpid()  # a caller of its own
    budget = CallerLimits(rpm=10**9, budget=10**15)
    memory = MemoryQuotas()

    def door() -> None:
        cache.incr_window(f"throttle:generate:bench:{user_id}", 61)

    def call(limits: CallerLimits | None) -> None:
        spend_open(user_id=user_id, limits=limits, model="m", estimate=300).settle(usage)
        if usage_buffer.pending() > 10_000:
            usage_buffer.discard()

    def in_memory() -> None:
        reservation = Reservation(user_id=user_id, limits=budget, estimate=300)
        now = time.time()
        memory.admit(reservation, now)
        memory.settle(reservation, 200, now)

    contenders = {"no limits (metered only)": lambda: call(None),
                  "rpm limit (one script)": lambda: call(CallerLimits(rpm=10**9)),
                  "rpm + token budget (admit + settle scripts)": lambda: call(budget),
                  "rpm + token budget, in process memory": in_memory}
    rows, base = [], 0.0
    for name, contender in contenders.items():
        ratio, mine, base = paired_ratio(contender, door, n=args.n, rounds=21)
        rows.append((name, fmt_time(mine), f"{ratio:.2f}"))
    table("Caller admission: cost per call (added to the call), against the door's existing Redis round "
          f"trip (the generate throttle, {fmt_time(base)})", ("limits", "per call", "ratio to the throttle"),
          rows)
    usage_buffer.discard()


if __name__ == "__main__":
    main()
