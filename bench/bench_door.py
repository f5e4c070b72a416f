"""`python -m bench.bench_door`: what one call through the /v1 front door costs, in process.

The project's ASGI application is called directly (no HTTP server, no
driver), one `POST /v1/chat/completions` at a time, against the load test's
loopback provider answering at once, with the server's settings as `make
loadtest` prepares them (a fresh SQLite database, Redis for the cache). The
figure is this process's CPU time per call (all its threads: the loop and
the worker threads the steps hop to), which is the server's share of
`make loadtest`'s CPU per call without the HTTP server's own parsing.

Also the body parse on its own: the shared parser (`json_loads`) against
orjson, on a small body and a 10 KB prompt.

`--hops ROUNDS` measures instead the client's steps as they were driven
before the hop policy (every step in a worker thread) against now (only
store work off the loop), in alternating rounds in the same process.

`--doors ROUNDS` measures the two front doors side by side: the chat
completion against the same call on `/v1/messages`, translated to the same
OpenAI-format provider, in alternating rounds.

`--gc ROUNDS` measures the server's young-generation threshold
(project.warm) against Python's default, with 32 concurrent callers and a
provider taking 50 ms: CPU and collection time per call, collections per
call and the longest one, in alternating rounds in the same process.

`--profile PATH` writes a pyinstrument profile of the timed calls (HTML, and
the same as text beside it); for a flame graph of every thread run the
bench under `py-spy record --native -f flamegraph -o out.svg -- python -m
bench.bench_door`. `--stream` measures streamed calls (10 chunks), `--cached`
cache hits (64 prompts repeated, of the model whose upstream caches answers).
"""
from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import os
import sys
import time
import timeit
import urllib.request
from pathlib import Path
from typing import Any

from bench.loadtest.driver import CACHED_MODEL, MODEL
from bench.loadtest.procs import GatewayServer, ProviderProcess, make_workdir, remove_workdir

#: The two front doors: path and the headers that carry the token in each one's way.
DOORS = {"chat": ("/v1/chat/completions", lambda token: [(b"authorization", f"Bearer {token}".encode())]),
         "messages": ("/v1/messages", lambda token: [(b"x-api-key", token.encode()),
                                                      (b"anthropic-version", b"2023-06-01")])}


def _scope(token: str, body: bytes, door: str = "chat") -> dict[str, Any]:
    path, credential = DOORS[door]
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": "http", "path": path, "raw_path": path.encode(),
            "query_string": b"", "root_path": "", "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
            "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
                        *credential(token), (b"content-length", str(len(body)).encode())]}


async def _call(application: Any, token: str, seq: int, stream: bool, door: str = "chat",
                cached: bool = False) -> None:
    # Cached: one of 64 prompts of the model whose upstream caches answers (hits after the first).
    prompt = f"bench cached {seq % 64}" if cached else f"bench {seq} {time.time()}"
    body = json.dumps({"model": CACHED_MODEL if cached else MODEL, "max_tokens": 200, "stream": stream,
                       "messages": [{"role": "user", "content": prompt}]}).encode()
    delivered = False
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the caller never hangs up
        return {}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await application(_scope(token, body, door), receive, send)
    if sent[0]["status"] != 200:
        raise RuntimeError(f"the call answered {sent[0]['status']}: {sent[1:]}")


async def _measure(application: Any, token: str, *, calls: int, stream: bool, profile: str | None,
                   door: str = "chat", cached: bool = False) -> float:
    for seq in range(50 if not cached else 128):  # warm: imports, connections, the token and policy caches
        await _call(application, token, -seq - 1, stream, door, cached)
    profiler = None
    if profile:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0002, async_mode="disabled")
        profiler.start()
    started = time.process_time()
    for seq in range(calls):
        await _call(application, token, seq, stream, door, cached)
    cpu = time.process_time() - started
    if profiler is not None:
        profiler.stop()
        Path(profile).write_text(profiler.output_html())
        Path(profile).with_suffix(".txt").write_text(profiler.output_text(unicode=False, color=False))
    return cpu * 1000 / calls


async def _hops_paired(application: Any, token: str, *, calls: int, rounds: int) -> dict[str, float]:
    """Median CPU ms per call with the client's steps driven as before the hop
    policy (`bench_async_steps`'s per-step hop: every step in a worker thread)
    and as now (store work only), in alternating rounds of `calls`."""
    import statistics

    from bench.bench_async_steps import BASELINE, NOW, _per_step_driver
    from resilience.client import core

    drivers = {BASELINE: _per_step_driver(), NOW: core.UpstreamClient._adrive}
    for seq in range(50):
        await _call(application, token, -seq - 1, False)
    cpu: dict[str, list[float]] = {name: [] for name in drivers}
    try:
        for index in range(rounds):
            for name in (list(drivers) if index % 2 else list(reversed(drivers))):
                core.UpstreamClient._adrive = drivers[name]  # type: ignore[method-assign]
                started = time.process_time()
                for seq in range(calls):
                    await _call(application, token, index * calls + seq, False)
                cpu[name].append((time.process_time() - started) * 1000 / calls)
    finally:
        core.UpstreamClient._adrive = drivers[NOW]  # type: ignore[method-assign]
    return {name: statistics.median(values) for name, values in cpu.items()}


async def _doors_paired(application: Any, token: str, *, calls: int, rounds: int,
                        stream: bool) -> dict[str, float]:
    """Median CPU ms per call through each front door (`DOORS`: the Messages door translating
    to the OpenAI-format provider), in alternating rounds of `calls`."""
    import statistics

    for seq in range(50):
        for door in DOORS:
            await _call(application, token, -seq - 1, stream, door)
    cpu: dict[str, list[float]] = {door: [] for door in DOORS}
    for index in range(rounds):
        for door in (list(DOORS) if index % 2 else list(reversed(DOORS))):
            started = time.process_time()
            for seq in range(calls):
                await _call(application, token, index * calls + seq, stream, door)
            cpu[door].append((time.process_time() - started) * 1000 / calls)
    return {door: statistics.median(values) for door, values in cpu.items()}


def parse_costs() -> list[tuple[str, float, float]]:
    """(body, shared parser us, orjson us) for a small body and a 10 KB prompt."""
    import orjson

    from resilience.ops.parsers import json_loads

    small = json.dumps({"model": "gpt-4o-mini", "max_tokens": 200,
                        "messages": [{"role": "user", "content": "Load run abcdef request 123"}]}).encode()
    prompt = json.dumps({"model": "gpt-4o-mini", "messages": [
        {"role": "user", "content": "hello world " * 20}] * 40}).encode()
    rows = []
    for label, raw, number in (("small", small, 5000), (f"{len(prompt) // 1000} KB", prompt, 300)):
        shared = timeit.timeit(lambda raw=raw: json_loads(raw), number=number) / number
        fast = timeit.timeit(lambda raw=raw: orjson.loads(raw), number=number) / number
        rows.append((label, shared * 1e6, fast * 1e6))
    return rows


def _gc_paired(application: Any, token: str, *, calls: int, rounds: int) -> dict[int, dict[str, float]]:
    """The young-generation threshold before (Python's default) and now (project.warm), in
    alternating rounds: `calls` calls from 32 concurrent callers each round, the provider taking
    50 ms. Per threshold: median CPU ms per call, GC ms per call, collections per call, and the
    longest collection (ms) seen."""
    import gc
    import statistics

    from project.warm import GEN0_THRESHOLD, warm_worker

    spent = {"seconds": 0.0, "count": 0, "longest": 0.0, "started": 0.0}

    def timed(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            spent["started"] = time.perf_counter()
            return
        took = time.perf_counter() - spent["started"]
        spent["seconds"] += took
        spent["count"] += 1
        spent["longest"] = max(spent["longest"], took)

    async def callers(first: int, count: int) -> int:
        """`count` calls (rounded down to a multiple of 32) from 32 callers; returns how many."""
        per = max(1, count // 32)
        await asyncio.gather(*(_callers_one(application, token, first + k * per, per) for k in range(32)))
        return per * 32

    async def run() -> dict[int, dict[str, list[float]]]:
        await callers(-100_000, 320)  # warm
        runs: dict[int, dict[str, list[float]]] = {t: {"cpu": [], "gc": [], "count": [], "longest": []}
                                                   for t in (default[0], GEN0_THRESHOLD)}
        for index in range(rounds):
            order = list(runs) if index % 2 else list(reversed(runs))
            for threshold in order:
                gc.set_threshold(threshold, *default[1:])
                spent.update(seconds=0.0, count=0, longest=0.0)
                started = time.process_time()
                done = await callers(index * 10 * calls + threshold, calls)
                runs[threshold]["cpu"].append((time.process_time() - started) * 1000 / done)
                runs[threshold]["gc"].append(spent["seconds"] * 1000 / done)
                runs[threshold]["count"].append(spent["count"] / done)
                runs[threshold]["longest"].append(spent["longest"] * 1000)
        return runs

    default = gc.get_threshold()
    warm_worker()  # as a server worker starts: what is loaded is frozen out of the collections
    gc.callbacks.append(timed)
    try:
        runs = asyncio.run(run())
    finally:
        gc.callbacks.remove(timed)
        gc.set_threshold(*default)
        gc.unfreeze()
    return {threshold: {"cpu": statistics.median(values["cpu"]), "gc": statistics.median(values["gc"]),
                        "count": statistics.median(values["count"]), "longest": max(values["longest"])}
            for threshold, values in runs.items()}


async def _callers_one(application: Any, token: str, first: int, count: int) -> None:
    for seq in range(first, first + count):
        await _call(application, token, seq, False)


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_door", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--stream", action="store_true", help="streamed calls (10 chunks)")
    parser.add_argument("--cached", action="store_true",
                        help="cache hits: 64 prompts repeated, of a model whose upstream caches answers")
    parser.add_argument("--profile", help="write a pyinstrument profile of the timed calls here (HTML)")
    parser.add_argument("--hops", type=int, default=0, metavar="ROUNDS",
                        help="instead: the client's steps as before the hop policy (per-step hop) against "
                             "now (store hops only), in ROUNDS alternating rounds of --calls calls")
    parser.add_argument("--door", choices=sorted(DOORS), default="chat",
                        help="the front door of a plain measure or profile (default chat)")
    parser.add_argument("--doors", type=int, default=0, metavar="ROUNDS",
                        help="instead: /v1/chat/completions against /v1/messages (translated to the same "
                             "OpenAI-format provider), in ROUNDS alternating rounds of --calls calls")
    parser.add_argument("--gc", type=int, default=0, metavar="ROUNDS",
                        help="instead: Python's default young-generation threshold against the server's "
                             "(project.warm), 32 callers, provider 50 ms, ROUNDS alternating rounds")
    parser.add_argument("--redis-url", default=os.environ.get("LOADTEST_REDIS_URL", "redis://127.0.0.1:6379/10"))
    return parser.parse_args(argv)


def _run(args: argparse.Namespace) -> Any:
    """The measure `args` ask for, against a fresh provider and database."""
    workdir = make_workdir()
    # At exit, after the call-log writer's last flush into the database kept there (LIFO).
    atexit.register(remove_workdir, workdir)
    provider = ProviderProcess(workdir).start()
    try:
        server = GatewayServer(workdir, provider_url=provider.url, redis_url=args.redis_url)
        server.prepare()
        os.environ.update(server.env)
        os.environ["DJANGO_SETTINGS_MODULE"] = "project.settings"
        config = json.dumps({"delay": 0.05 if args.gc else 0.0, "chunks": 10}).encode()
        urllib.request.urlopen(urllib.request.Request(provider.url + "/_config", data=config, headers={
            "Content-Type": "application/json"}), timeout=10).close()
        from project.asgi import application

        if args.gc:
            return _gc_paired(application, server.token, calls=args.calls, rounds=args.gc)
        if args.doors:
            return asyncio.run(_doors_paired(application, server.token, calls=args.calls, rounds=args.doors,
                                             stream=args.stream))
        if args.hops:
            return asyncio.run(_hops_paired(application, server.token, calls=args.calls, rounds=args.hops))
        return asyncio.run(_measure(application, server.token, calls=args.calls, stream=args.stream,
                                    profile=args.profile, door=args.door, cached=args.cached))
    finally:
        provider.stop()


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    result = _run(args)
    kind = "stream of 10 chunks" if args.stream else "cache hit" if args.cached else "call"
    if args.gc:
        print(f"/v1/chat/completions in process, 32 callers, provider 50 ms (median of {args.gc} alternating "
              f"rounds of {args.calls} calls):")
        base = next(iter(result.values()))["cpu"]
        for threshold, row in result.items():
            print(f"  young generation every {threshold}: {row['cpu']:.3f} ms CPU per call "
                  f"({row['cpu'] / base:.2f}), collecting {row['gc']:.3f} ms per call, "
                  f"{row['count']:.4f} collections per call, longest {row['longest']:.1f} ms")
    elif args.doors:
        print(f"CPU per {kind} in process (median of {args.doors} alternating rounds of {args.calls}):")
        for door, ms in result.items():
            print(f"  {DOORS[door][0]}: {ms:.3f} ms ({ms / result['chat']:.2f})")
    elif args.hops:
        base = next(iter(result.values()))  # the first: the baseline (before)
        print(f"/v1/chat/completions in process, CPU per call (median of {args.hops} alternating rounds "
              f"of {args.calls}):")
        for name, ms in result.items():
            print(f"  {name}: {ms:.3f} ms ({ms / base:.2f})")
    else:
        print(f"{DOORS[args.door][0]} in process: {result:.3f} ms of CPU per {kind} ({args.calls} calls)")
        print("\n| body | shared parser | orjson | ratio |\n|---|---|---|---|")
        for label, shared, fast in parse_costs():
            print(f"| {label} | {shared:.1f} us | {fast:.1f} us | {shared / fast:.0f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
