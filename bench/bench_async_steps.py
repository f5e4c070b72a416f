"""How the async client keeps its steps' Redis reads off the event loop,
measured three ways in one run, with the cache on a real Redis (REDIS_URL,
default redis://127.0.0.1:6379/0, under a key prefix of its own) and a local
upstream in a process of its own (nginx; the load runs' aiohttp provider
when nginx is missing), so the upstream takes no share of this process:

- per-step hop (today, `UpstreamClient._adrive`): each step of the call's
  logic runs in a worker thread (`asyncio.to_thread`) whether or not it
  touches Redis; the baseline;
- one `sync_to_async` per call: the whole call through the sync face in a
  worker thread (requests and its pool instead of the async transport);
- Django's async cache methods: what a step's cache read costs through
  `await cache.aget_many(...)` (BaseCache's default: `sync_to_async`, thread
  sensitive, for a backend without native async, as django-redis is), one
  hop per Redis command instead of one per step. The steps are generators
  that read the cache synchronously, so this way is priced as the steps run
  inline plus one such hop per Redis command a call makes (counted here);
- steps inline on the loop, for reference only: the cheapest, and not
  allowed (a Redis round trip then blocks every other request on the loop).

Each path is timed one call at a time and 64 at once, in alternating rounds;
the ratio is the median of per-round ratios to the baseline. "loop lag" is
the longest a 1 ms ticker on the same loop waited past its time during that
path's rounds: what the other requests on the worker felt.
"""
from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable

from bench.common import Nginx, async_paired, django_setup, fmt_time, table

N = 256
ROUNDS = 15
CONCURRENT = 64
NAME = "bench-async-steps"
#: A path every upstream here answers at once (nginx: any; the provider: its model list).
PATH = "/v1/models"

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


def _contenders() -> tuple[dict[str, Op], Callable[[bool], None]]:
    from asgiref.sync import sync_to_async

    from resilience import upstream
    from resilience.cache import default_cache
    from resilience.client import core

    client = upstream(NAME)
    shared = core.cache_is_shared

    def inline(on: bool) -> None:
        """Steps on the loop (True) or hopped per step as today (False)."""
        core.cache_is_shared = (lambda store: False) if on else shared  # type: ignore[assignment]

    async def per_step_hop() -> object:
        return (await client.aget(PATH, cache=False)).content

    via_thread = sync_to_async(client.get, thread_sensitive=False)

    async def per_call_hop() -> object:
        return (await via_thread(PATH, cache=False)).content

    store = default_cache()
    keys = [f"breaker:{NAME}:{part}" for part in ("state", "opened_at", "fails", "reopens")]

    async def django_async_read() -> object:
        return await store.aget_many(keys)  # the breaker snapshot's read, as Django's async API runs it

    return ({"per-step hop": per_step_hop, "one sync_to_async per call": per_call_hop,
             "steps inline": per_step_hop, "one Django async cache read": django_async_read}, inline)


async def _run() -> tuple[list[tuple[object, ...]], dict[str, float]]:
    contenders, inline = _contenders()
    rows: list[tuple[object, ...]] = []
    figures: dict[str, float] = {}
    baseline = "per-step hop"
    for concurrent in (1, CONCURRENT):
        # "steps inline" runs the same call with the steps on the loop: switched per op.
        def switched(name: str, op: Op) -> Op:
            async def run() -> object:
                inline(name == "steps inline")
                return await op()
            return run
        measured = await async_paired({name: switched(name, op) for name, op in contenders.items()},
                                      baseline, n=N, rounds=ROUNDS, concurrent=concurrent)
        inline(False)
        for name, (seconds, ratio, lag) in measured.items():
            figures[f"{name}@{concurrent}"] = seconds
            rows.append((f"{name}, {concurrent} at once", fmt_time(seconds),
                         "1.00 (baseline)" if name == baseline else f"{ratio:.2f}", fmt_time(lag)))
    return rows, figures


def _priced(figures: dict[str, float], commands: float) -> list[tuple[object, ...]]:
    rows = []
    for concurrent in (1, CONCURRENT):
        base = figures[f"per-step hop@{concurrent}"]
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


def main() -> None:
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
        "base_url": url, "retry_total": 0, "pool_size": CONCURRENT, "connect_timeout": 1, "read_timeout": 5,
        "deadline": 10, "cache_ttl": 0})
    try:
        import uvloop

        from resilience import upstream

        commands = _counted_redis_commands(upstream(NAME), 200)
        rows, figures = uvloop.run(_run())
    finally:
        call_log_discard()
        if nginx is not None:
            nginx.stop()
        if provider is not None:
            provider.terminate()
            provider.wait()
    against = "nginx" if nginx is not None else "the aiohttp provider"
    table(f"Async client steps off the loop: per call against {against}, cache on Redis "
          f"(median of {ROUNDS} alternating rounds)", ("path", "per call", "ratio", "loop lag"), rows)
    table(f"Django's async cache methods, priced: steps inline + {commands:.3f} Redis commands a call "
          "x one `aget_many`", ("path", "per call", "ratio to the per-step hop"), _priced(figures, commands))


if __name__ == "__main__":
    main()
