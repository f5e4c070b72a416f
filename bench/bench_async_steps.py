"""How the async client keeps its steps' Redis work off the event loop,
measured several ways in one run, with the cache on a real Redis (REDIS_URL,
default redis://127.0.0.1:6379/0, under a key prefix of its own) and a local
upstream in a process of its own (nginx; the load runs' aiohttp provider
when nginx is missing), so the upstream takes no share of this process:

- per-step hop (before, the baseline): each step of the call's logic runs in
  a worker thread (`asyncio.to_thread`) whether or not it touches Redis, its
  store work with it (the driver `UpstreamClient._adrive` had until the hop
  policy changed; kept here to be measured against);
- store hops only (now, `UpstreamClient._adrive`): the steps run on the loop
  and only their `OnStore` commands (a due re-read, a cache get or set, a
  breaker write) hop to a worker thread; a healthy uncached call makes none;
- one `sync_to_async` per call: the whole call through the sync face in a
  worker thread (requests and its pool instead of the async transport);
- Django's async cache methods: what a step's cache read costs through
  `await cache.aget_many(...)` (BaseCache's default: `sync_to_async`, thread
  sensitive, for a backend without native async, as django-redis is), one
  hop per Redis command instead of one per step. The steps are generators
  that read the cache synchronously, so this way is priced as the steps run
  inline plus one such hop per Redis command a call makes (counted here);
- steps inline on the loop, store work included, for reference only: not
  allowed (a Redis round trip then blocks every other request on the loop).

Each path is timed one call at a time and 64 at once, in alternating rounds;
the ratio is the median of per-round ratios to the baseline. "loop lag" is
the longest a 1 ms ticker on the same loop waited past its time during that
path's rounds: what the other requests on the worker felt. A second table
gives this process's CPU time per call (all its threads; the upstream runs
in another process), the figure the hop policy is about on a busy box.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any

from bench.common import Nginx, async_paired, django_setup, fmt_time, table

N = 256
#: Alternating rounds per table (`--rounds` changes it).
ROUNDS = 15
CONCURRENT = 64
NAME = "bench-async-steps"
#: A path every upstream here answers at once (nginx: any; the provider: its model list).
PATH = "/v1/models"

BASELINE = "per-step hop (before)"
NOW = "store hops only (now)"

Op = Callable[[], Awaitable[object]]


def _counted_redis_commands(client: object, calls: int) -> float:
    """Redis commands the steps of one call send, on average over `calls`
    calls spread over a few breaker rechecks (the cache's read methods
    counted on the shared instance)."""
    from asgiref.sync import async_to_sync

    from resilience.cache import default_cache

    store = default_cache()
    seen = {"count": 0}
    originals = {name: getattr(store, name) for name in ("get", "get_many", "set", "add", "incr", "delete")}

    def counting(method: Callable[..., object]) -> Callable[..., object]:
        def wrapper(*args: object, **kwargs: object) -> object:
            seen["count"] += 1
            return method(*args, **kwargs)
        return wrapper

    for name, method in originals.items():
        setattr(store, name, counting(method))
    try:
        async def run() -> None:
            for _ in range(calls):
                await client.aget(PATH, cache=False)  # type: ignore[attr-defined]
                await asyncio.sleep(0.002)
        async_to_sync(run)()
    finally:
        for name in originals:
            delattr(store, name)
    return seen["count"] / calls


def _per_step_driver() -> Callable[..., Awaitable[object]]:
    """`UpstreamClient._adrive` as it was before the hop policy: every step
    advanced in a worker thread, its store work (`OnStore`) done there too."""
    from resilience.client.steps import OnStore

    def advance(steps: Any, value: Any, failure: Exception | None) -> tuple[bool, Any]:
        while True:
            try:
                command = steps.throw(failure) if failure is not None else steps.send(value)
            except StopIteration as stop:
                return True, stop.value
            if not isinstance(command, OnStore):
                return False, command
            value, failure = None, None
            try:
                value = command.work()
            except Exception as err:
                failure = err

    async def adrive(self: Any, steps: Any) -> object:
        value: Any = None
        failure: Exception | None = None
        try:
            while True:
                done, command = await asyncio.to_thread(advance, steps, value, failure)
                if done:
                    return command
                value, failure = None, None
                try:
                    value = await self._aperform(command)
                except Exception as err:
                    failure = err
        finally:
            steps.close()
    return adrive


def _contenders() -> tuple[dict[str, Op], Callable[[str], None]]:
    from asgiref.sync import sync_to_async

    from resilience import upstream
    from resilience.cache import default_cache
    from resilience.client import core

    client = upstream(NAME)
    shared = core.cache_is_shared
    now_driver = core.UpstreamClient._adrive
    before_driver = _per_step_driver()

    def switch(name: str) -> None:
        """The driver and hop policy contender `name` runs with."""
        driver = before_driver if name == BASELINE else now_driver
        core.UpstreamClient._adrive = driver  # type: ignore[method-assign]
        inline = name == "steps inline"
        core.cache_is_shared = (lambda store: False) if inline else shared  # type: ignore[assignment]

    async def call() -> object:
        return (await client.aget(PATH, cache=False)).content

    via_thread = sync_to_async(client.get, thread_sensitive=False)

    async def per_call_hop() -> object:
        return (await via_thread(PATH, cache=False)).content

    store = default_cache()
    keys = [f"breaker:{NAME}:{part}" for part in ("state", "opened_at", "fails", "reopens")]

    async def django_async_read() -> object:
        return await store.aget_many(keys)  # the breaker snapshot's read, as Django's async API runs it

    return ({BASELINE: call, NOW: call, "one sync_to_async per call": per_call_hop,
             "steps inline": call, "one Django async cache read": django_async_read}, switch)


def _switched(switch: Callable[[str], None], contenders: dict[str, Op]) -> dict[str, Op]:
    """The contenders, each run with its own driver (switched per op)."""
    def switched(name: str, op: Op) -> Op:
        async def run() -> object:
            switch(name)
            return await op()
        return run
    return {name: switched(name, op) for name, op in contenders.items()}


async def _cpu_paired(contenders: dict[str, Op], *, n: int, rounds: int,
                      concurrent: int) -> dict[str, tuple[float, float]]:
    """name -> (median CPU seconds of this process per op, median ratio to the
    baseline's round), in alternating rounds as `async_paired` does."""
    async def cpu_per_op(op: Op) -> float:
        async def worker(count: int) -> None:
            for _ in range(count):
                await op()
        started = time.process_time()
        await asyncio.gather(*(worker(n // concurrent) for _ in range(concurrent)))
        return (time.process_time() - started) / (n // concurrent * concurrent)

    names = list(contenders)
    cpu: dict[str, list[float]] = {name: [] for name in names}
    ratios: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        measured = {name: await cpu_per_op(contenders[name])
                    for name in (names if index % 2 else list(reversed(names)))}
        for name, seconds in measured.items():
            cpu[name].append(seconds)
            ratios[name].append(seconds / measured[BASELINE])
    return {name: (statistics.median(cpu[name]), statistics.median(ratios[name])) for name in names}


async def _run(rounds: int) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]], dict[str, float]]:
    contenders, switch = _contenders()
    ops = _switched(switch, contenders)
    rows: list[tuple[object, ...]] = []
    cpu_rows: list[tuple[object, ...]] = []
    figures: dict[str, float] = {}
    for concurrent in (1, CONCURRENT):
        measured = await async_paired(ops, BASELINE, n=N, rounds=rounds, concurrent=concurrent)
        for name, (seconds, ratio, lag) in measured.items():
            figures[f"{name}@{concurrent}"] = seconds
            rows.append((f"{name}, {concurrent} at once", fmt_time(seconds),
                         "1.00 (baseline)" if name == BASELINE else f"{ratio:.2f}", fmt_time(lag)))
        calls = {name: op for name, op in ops.items() if name != "one Django async cache read"}
        for name, (seconds, ratio) in (await _cpu_paired(calls, n=N, rounds=rounds,
                                                         concurrent=concurrent)).items():
            cpu_rows.append((f"{name}, {concurrent} at once", fmt_time(seconds),
                             "1.00 (baseline)" if name == BASELINE else f"{ratio:.2f}"))
    switch(NOW)
    return rows, cpu_rows, figures


def _priced(figures: dict[str, float], commands: float) -> list[tuple[object, ...]]:
    rows = []
    for concurrent in (1, CONCURRENT):
        base = figures[f"{BASELINE}@{concurrent}"]
        read = figures[f"one Django async cache read@{concurrent}"]
        django = figures[f"steps inline@{concurrent}"] + commands * read
        rows.append((f"Django's async cache methods, {concurrent} at once (priced)", fmt_time(django),
                     f"{django / base:.2f}"))
    return rows


def _provider() -> tuple[subprocess.Popen[bytes], str]:
    """bench.loadtest.provider on a free port, answering at once; (process, URL)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "bench.loadtest.provider", "--port", str(port),
                                "--delay", "0"])
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(f"{url}/v1/models", timeout=0.2).read()
            return process, url
        except OSError:
            time.sleep(0.05)
    process.terminate()
    raise SystemExit("the provider did not start")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_async_steps", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    rounds = parser.parse_args(argv).rounds
    django_setup(REDIS_URL=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
                 CACHE_KEY_PREFIX=f"rslbench-steps-{os.getpid()}")
    from resilience.cache import default_cache
    from resilience.client import core
    from resilience.models import Upstream
    from resilience.telemetry.calllog import call_log_discard

    if not core.cache_is_shared(default_cache()):
        raise SystemExit("bench_async_steps needs the cache on Redis (REDIS_URL): on memory nothing hops")
    nginx = Nginx().start() if Nginx.available() else None
    provider, url = (None, nginx.url) if nginx is not None else _provider()
    Upstream.objects.update_or_create(name=NAME, defaults={
        "base_url": url, "retry_total": 0, "pool_size": CONCURRENT, "connect_timeout": 5, "read_timeout": 30,
        "deadline": 60, "cache_ttl": 0})
    try:
        import uvloop

        from resilience import upstream

        commands = _counted_redis_commands(upstream(NAME), 200)
        rows, cpu_rows, figures = uvloop.run(_run(rounds))
    finally:
        call_log_discard()
        if nginx is not None:
            nginx.stop()
        if provider is not None:
            provider.terminate()
            provider.wait()
    against = "nginx" if nginx is not None else "the aiohttp provider"
    table(f"Async client steps off the loop: per call against {against}, cache on Redis "
          f"(median of {rounds} alternating rounds)", ("path", "per call", "ratio", "loop lag"), rows)
    table(f"CPU of this process per call (all its threads), against {against} "
          f"(median of {rounds} alternating rounds)", ("path", "CPU per call", "ratio"), cpu_rows)
    table(f"Django's async cache methods, priced: steps inline + {commands:.3f} Redis commands a call "
          "x one `aget_many`", ("path", "per call", f"ratio to the {BASELINE}"), _priced(figures, commands))


if __name__ == "__main__":
    main()
