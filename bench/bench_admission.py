"""The admission path's cost, side by side in one run, with the quota state on Redis
(BENCH_REDIS_URL, else local memory):

- a whole call through the client against a local nginx (or the Python fake) to an endpoint with
  `rpm_limit` and `tpm_limit` set (high enough never to wait: the reservation, the correction
  riding on the next call) vs the same endpoint without limits, in paired rounds; the difference
  per call is what admission adds (target: under 0.3 ms). Twice: far from the limits, where one
  admission script leases up to `QUOTA_LEASE` requests to the process (the target is judged on
  this, the case of a high limit), and near them (`QUOTA_LEASE` 0: one script, one round trip per
  call, as every call pays once its endpoint nears a limit);
- the same pair in CPU time (this process's `time.process_time` per call, in the same alternating
  rounds, plus the script's own run inside Redis from INFO commandstats): what admission costs the
  machine, which the scheduler's wake-ups on a busy box do not inflate as they do the wall clock;
- the admission script alone (`Quota.admit`), next to a plain cache get (one round trip to the
  same Redis), for scale: on a busy machine the round trip is most of the cost.

Benchmarks run at the `low` admission priority, as batch work does.
"""
from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

from bench.common import Nginx, compare, django_setup, fmt_time, table, verdict

TARGET_MS = 0.3
BODY = {"model": "m", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16}


def _upstream(name: str, url: str, *, limited: bool) -> None:
    from resilience.models import Endpoint, Upstream

    row, _ = Upstream.objects.update_or_create(name=name, defaults={
        "base_url": url, "retry_total": 0, "breaker_fail_max": 5, "pool_size": 8, "connect_timeout": 1,
        "read_timeout": 5, "deadline": 10, "log_sample_rate": 0.01})
    Endpoint.objects.filter(upstream=row).delete()
    limits = {"rpm_limit": 10**9, "tpm_limit": 10**12} if limited else {}
    Endpoint.objects.create(upstream=row, name="e0", base_url=url, **limits)


def main() -> None:
    django_setup()
    from django.test import override_settings

    from resilience.cache import reset_engines
    from resilience.client import reset_clients
    from resilience.client.context import priority_bound
    from resilience.telemetry.calllog import call_log_discard

    location, store = _store_location(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14"))
    # Without nginx the fake answers from a process of its own: a server thread in this process
    # would hold the GIL while a call waits on Redis and charge its time to the admission.
    nginx = Nginx().start() if Nginx.available() else None
    fake = None if nginx is not None else _FakeProcess()
    target = nginx.url if nginx is not None else fake.url
    caches = {"default": {"BACKEND": "resilience.cache.FallbackCache", "LOCATION": location,
                          "KEY_PREFIX": "rslbench-admission"}}
    with override_settings(CACHES=caches), priority_bound("low"):
        reset_engines()
        reset_clients()
        rows, added, cpu_added = _call_rows(target)
        script = _script_rows()
        call_log_discard()
    reset_engines()
    reset_clients()
    if fake is not None:
        fake.stop()
    if nginx is not None:
        nginx.stop()
    against = "nginx" if nginx is not None else "the Python fake (its own process)"
    table(f"A whole call against {against}: limits on vs off, paired rounds (quota state on {store}; "
          "CPU: this process plus the script's run inside Redis)",
          ("endpoint", "per call (limited vs open)", "ratio", "added: wall clock", "added: CPU",
           "admission scripts"), rows)
    table("The admission script alone, next to one plain round trip", ("operation", "per call"), script)
    print(f"\nadded by admission far from the limits: {added * 1000:.3f} ms per call on the wall clock "
          f"({verdict(added * 1000 <= TARGET_MS)}), {cpu_added * 1000:.3f} ms of CPU "
          f"({verdict(cpu_added * 1000 <= TARGET_MS)})")


def _call_rows(target: str) -> tuple[list[tuple[object, ...]], float, float]:
    """Rows for both admissions, each paired with the unlimited call in its own rounds: far from
    the limits (a lease: one script for up to QUOTA_LEASE calls) and near them (QUOTA_LEASE 0: one
    script per call, as every call pays once its endpoint nears its limit). The target is judged on
    the first, the common case of a high limit; the second is printed beside it."""
    from django.conf import settings
    from django.test import override_settings

    from resilience import upstream

    _upstream("bench-open", target, limited=False)
    _upstream("bench-limited", target, limited=True)
    open_client, limited_client = upstream("bench-open"), upstream("bench-limited")
    assert limited_client.policy and limited_client.endpoint_names() == ("e0",)
    rows: list[tuple[object, ...]] = [("no limits", "-", "1.00", "-", "-", "-")]
    figures = []
    for label, lease in (("far from the limits (leased)", None), ("near them (one script per call)", 0)):
        overrides = {} if lease is None else {"QUOTA_LEASE": lease}
        with override_settings(RESILIENCE={**getattr(settings, "RESILIENCE", {}), **overrides}):
            wall, cpu, scripts = _pair(open_client, limited_client)
        figures.append((wall, cpu))
        rows.append((f"limits on, {label}", f"{fmt_time(wall[1])} vs {fmt_time(wall[2])}", f"{wall[0]:.3f}",
                     fmt_time(wall[1] - wall[2]), fmt_time(cpu[1] - cpu[2]), scripts))
    (wall, cpu) = figures[0]
    return rows, wall[1] - wall[2], cpu[1] - cpu[2]


def _pair(open_client, limited_client) -> tuple[tuple[float, float, float], tuple[float, float, float], str]:
    """(wall clock, CPU) as (ratio, limited s/call, open s/call), CPU including the script's run
    inside Redis per limited call, and how many scripts the limited calls ran."""
    calls = 0

    def off() -> None:
        open_client.post("/v1/chat/completions", json=BODY).close()

    def on() -> None:
        nonlocal calls
        calls += 1
        limited_client.post("/v1/chat/completions", json=BODY).close()

    before = _evalsha_stats()
    wall, (cpu_ratio, cpu_mine, cpu_base) = _paired(on, off, n=200, rounds=21, warmup=200)
    after = _evalsha_stats()
    inside, scripts = 0.0, "- (local memory)"
    if before is not None and after is not None:
        inside = (after[1] - before[1]) / calls / 1e6  # server-wide counts, per limited call
        scripts = f"{after[0] - before[0]} for {calls} calls"
    return wall, (cpu_ratio, cpu_mine + inside, cpu_base), scripts


def _paired(contender: Callable[[], object], baseline: Callable[[], object], *, n: int, rounds: int,
            warmup: int) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """bench.common.paired_ratio measuring wall clock and this process's CPU time of the same
    rounds: (ratio, contender s/op, baseline s/op) for each."""
    for _ in range(warmup):
        contender()
        baseline()
    wall: dict[str, list[float]] = {"mine": [], "base": [], "ratio": []}
    cpu: dict[str, list[float]] = {"mine": [], "base": [], "ratio": []}
    for index in range(rounds):
        order = (baseline, contender) if index % 2 == 0 else (contender, baseline)
        measured = {}
        for fn in order:
            start, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(n):
                fn()
            measured[fn] = ((time.perf_counter() - start) / n, (time.process_time() - start_cpu) / n)
        for kind, into in ((0, wall), (1, cpu)):
            into["mine"].append(measured[contender][kind])
            into["base"].append(measured[baseline][kind])
            into["ratio"].append(measured[contender][kind] / measured[baseline][kind])

    def summary(into: dict[str, list[float]]) -> tuple[float, float, float]:
        return (statistics.median(into["ratio"]), statistics.median(into["mine"]),
                statistics.median(into["base"]))

    return summary(wall), summary(cpu)


def _script_rows() -> list[tuple[object, ...]]:
    from resilience.cache import default_cache
    from resilience.client.quota import Quota, call_id

    quota = Quota("bench-script", "e0", rpm=10**9, tpm=10**12)
    store = default_cache()

    def admit() -> None:
        quota.admit(tokens=20, waiter=call_id(), reservation=call_id(), rank=2, window=60.1, slices=10)

    def get() -> None:
        store.get("bench-admission-probe")

    before = _evalsha_stats()
    seconds = compare({"admit": admit, "get": get}, n=500, rounds=5)
    after = _evalsha_stats()
    rows = [("Quota.admit (one EVALSHA)", fmt_time(seconds["admit"])),
            ("a cache get (one round trip, for scale)", fmt_time(seconds["get"]))]
    if before is not None and after is not None and after[0] > before[0]:
        inside = (after[1] - before[1]) / (after[0] - before[0]) / 1e6
        rows.append(("the script's run inside Redis (INFO commandstats)", fmt_time(inside)))
    return rows


def _evalsha_stats() -> tuple[int, int] | None:
    """(calls, microseconds) Redis counted for EVALSHA so far, or None off Redis."""
    from resilience.cache import default_cache

    engine = getattr(default_cache(), "engine", None)
    if engine is None or engine.redis is None:
        return None
    stats = engine.redis.client.get_client(write=True).info("commandstats").get("cmdstat_evalsha")
    return (int(stats["calls"]), int(stats["usec"])) if stats else (0, 0)


class _FakeProcess:
    """tests.support.fake_upstream's server in a child process (answers every path with 200)."""

    def __init__(self) -> None:
        import subprocess
        import sys

        code = ("import sys, time\nfrom tests.support.fake_upstream import FakeUpstream\n"
                "fake = FakeUpstream().start()\nprint(fake.url, flush=True)\nsys.stdin.read()\n")
        self.process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)
        self.url = self.process.stdout.readline().strip()

    def stop(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=10)


def _store_location(redis_url: str) -> tuple[str, str]:
    """(cache LOCATION, its name): Redis when it answers, else local memory."""
    import redis as redis_lib

    try:
        redis_lib.Redis.from_url(redis_url, socket_timeout=0.5).ping()
    except redis_lib.RedisError:
        return "", "local memory"
    return redis_url, "Redis"


if __name__ == "__main__":
    main()
