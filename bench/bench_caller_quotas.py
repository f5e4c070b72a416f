"""Caller admission benchmark (aigen.generation.quotas): what an API token's
limits add to a call, side by side in one run, against the one Redis round
trip every call already makes at the door (the generate throttle's
INCR + EXPIRE pipeline, `incr_window`).

    .venv/bin/python -m bench.bench_caller_quotas [--n N]

Rows, per call: the door's throttle alone (every caller without limits: the
baseline, already on the hot path); a limited caller's admission script,
which counts the same throttle window (so what it adds before the call is
its own difference to the baseline); the settle script after the answer
(only with a token budget); the same limits in process memory (no Redis).
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
    from aigen.generation.quotas import CallerLimits, MemoryQuotas, Reservation, ThrottleWindow, quota_settle
    from aigen.generation.spend import spend_open

    UsageBuffer.autostart = False  # the ledger's writes are off the call path: not measured here
    assert getattr(cache, "shared", False), "the benchmark needs Redis (BENCH_REDIS_URL)"
    usage = {"prompt_tokens": 120, "completion_tokens": 80}
    user_id = 10**9 + os.getpid()  # a caller of its own
    budget = CallerLimits(rpm=10**9, budget=10**15)
    memory = MemoryQuotas()

    def door() -> None:  # what every caller's door does before the call: the throttle's pipeline
        cache.incr_window(throttle.key, throttle.ttl)

    def limited_door() -> None:  # a limited caller's door: the admission script, counting the throttle too
        spend = spend_open(user_id=user_id, limits=budget, model="m", estimate=300, throttle=throttle)
        held.append(spend)

    def settle() -> None:  # after the answer: the settle script (its work does not depend on the reservation)
        quota_settle(Reservation(user_id=user_id, limits=budget, estimate=300), used=200)

    def in_memory() -> None:
        reservation = Reservation(user_id=user_id, limits=budget, estimate=300)
        now = time.time()
        memory.admit(reservation, now)
        memory.settle(reservation, 200, now)

    held: list = []
    throttle = ThrottleWindow(f"throttle:generate:{user_id}:bench", 10**12, 3600, 1.0)
    ratio, admit, base = paired_ratio(limited_door, door, n=args.n, rounds=21)
    for spend in held:
        spend.settle(usage)
    held.clear()
    settle_ratio, settled, _ = paired_ratio(settle, door, n=args.n, rounds=21)
    memory_ratio, in_mem, _ = paired_ratio(in_memory, door, n=args.n, rounds=21)
    table("Caller admission: Redis work per call, side by side with the door's existing round trip",
          ("step", "per call", "ratio to the throttle", "added to the call"), [
              ("door, no limits: the generate throttle (INCR + EXPIRE pipeline)", fmt_time(base),
               "1.00 (baseline)", "0 (already there)"),
              ("door, rpm + budget: the admission script (counts the throttle too)", fmt_time(admit),
               f"{ratio:.2f}", fmt_time(admit - base)),
              ("after the answer, budget only: the settle script", fmt_time(settled), f"{settle_ratio:.2f}",
               fmt_time(settled)),
              ("rpm + budget without Redis (process memory), admit + settle", fmt_time(in_mem),
               f"{memory_ratio:.2f}", fmt_time(in_mem)),
          ])
    usage_buffer.discard()


if __name__ == "__main__":
    main()
