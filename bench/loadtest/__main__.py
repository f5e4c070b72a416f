"""`python -m bench.loadtest` (`make loadtest`): the load scenarios against each contender.

Contenders, one after the other, against one loopback provider:
- direct: the driver straight to the provider (what the tool itself costs);
- this project, started by `make serve` (whatever that target runs today),
  through POST /api/ai/generate;
- this project /v1: the same server through its OpenAI-compatible front door
  (POST /v1/chat/completions, the path most traffic takes; `--no-front-door`);
- this project /v1/messages: the same server through its Anthropic Messages
  front door, translated to the OpenAI-format provider (`--no-messages`);
- with `--litellm`: the LiteLLM proxy with 1 and 4 workers (`--litellm-workers`).

Scenarios (issue 9), each with the provider scripted for it:
- burst: 256 distinct non-streamed generations at once, provider 1 s;
- streams: 500 SSE streams opened at once, 10 chunks over 1 s;
- steady: 100 non-streamed requests a second for 20 s, provider 50 ms;
- sustained: 100 new streams a second for 30 s, each 10 chunks over 10 s
  (about 1000 open at once); last, since a server that cannot carry it keeps
  working through abandoned requests long after.

And the cost figures (issue 30, bench/loadtest/ramp.py):
- callers: 32 callers one request at a time for 15 s, provider 50 ms (CPU per
  call, added p50/p99);
- callers-streams: the same with streams of 10 chunks over 0.5 s (CPU per stream);
- callers-cached: 32 callers cycling through 64 distinct generations of a
  model whose upstream caches answers (CPU per cache hit; this project's /v1
  and direct, the provider answering at once, only);
- the step ramp (after the scenarios, OpenAI-dialect contenders only; `--no-ramp`):
  the rate raised until added p99 passes 20 ms or a request fails.
`--quick` shrinks all of them for a smoke run. Prints one markdown table with
ratios measured in this run and the ramp's table; `--json PATH` also writes
every figure, `--plot PATH` draws added p99 against rate (SVG).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.loadtest.driver import CACHED_MODEL, Driver, Sample, Target, at_once, paced, percentile
from bench.loadtest.procs import (
    GatewayServer,
    Group,
    LiteLLMServer,
    ProviderProcess,
    TreeMeter,
    make_workdir,
    remove_workdir,
)
from bench.loadtest.ramp import QUICK_RATES, RAMP_RATES, Ramp, closed, ramp_plot, ramp_run, ramp_table


@dataclass(frozen=True)
class Scenario:
    name: str
    stream: bool
    delay: float  # the provider's seconds per call (the whole stream for streams)
    chunks: int = 10
    count: int = 0  # at once: this many together
    callers: int = 0  # closed loop: this many callers, one request at a time each, for `duration`
    rate: float = 0.0  # paced: this many a second ...
    duration: float = 0.0  # ... for this long
    timeout: float = 90.0  # per request
    #: Closed loop over this many distinct requests of a cached model: cache hits after the first
    #: round (run against the contenders that cache it: this project's /v1, and direct).
    repeat: int = 0

    @property
    def first_chunk_nominal(self) -> float:
        return self.delay / self.chunks

    def describe(self) -> str:
        shape = (f"{self.count} at once" if self.count
                 else f"{self.callers} callers for {self.duration:g} s" if self.callers
                 else f"{self.rate:g}/s for {self.duration:g} s")
        kind = f"streams of {self.chunks} chunks over {self.delay:g} s" if self.stream \
            else f"generations, provider {self.delay * 1000:g} ms"
        if self.repeat:
            kind = f"{self.repeat} distinct generations repeated: cache hits, provider at once"
        return f"{shape}, {kind}"


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    quick = args.quick
    sustained_s = args.sustained_duration or (6.0 if quick else 30.0)
    stream_s = args.sustained_stream or (3.0 if quick else 10.0)
    steady_s = args.steady_duration or (5.0 if quick else 20.0)
    table = {
        "burst": Scenario("burst", stream=False, delay=1.0, count=32 if quick else 256, timeout=90),
        "streams": Scenario("streams", stream=True, delay=1.0, count=50 if quick else 500, timeout=90),
        "sustained": Scenario("sustained", stream=True, delay=stream_s, rate=20 if quick else 100,
                              duration=sustained_s, timeout=stream_s + 30),
        "steady": Scenario("steady", stream=False, delay=0.05, rate=50 if quick else 100,
                           duration=steady_s, timeout=30),
        "callers": Scenario("callers", stream=False, delay=0.05, callers=32,
                            duration=3.0 if quick else 15.0, timeout=30),
        "callers-streams": Scenario("callers-streams", stream=True, delay=0.5, callers=32,
                                    duration=3.0 if quick else 15.0, timeout=30),
        "callers-cached": Scenario("callers-cached", stream=False, delay=0.0, callers=32,
                                   duration=3.0 if quick else 15.0, timeout=30, repeat=64),
    }
    return [table[name] for name in args.scenarios]


@dataclass
class Result:
    target: str
    scenario: str
    requests: int
    ok: int
    errors: dict[str, int]
    wall_s: float
    throughput: float
    p50_s: float | None
    p99_s: float | None
    overhead_p50_ms: float | None
    overhead_p99_ms: float | None
    first_p50_s: float | None
    first_p99_s: float | None
    first_overhead_p99_ms: float | None
    provider_requests: int
    provider_peak: int
    cpu_ms_per_request: float | None  # over every request sent
    cpu_ms_per_ok: float | None  # over the answered ones (differs when requests failed)
    pss_mb: float | None
    driver_cpu_pct: float


def summarize(target: str, scenario: Scenario, samples: list[Sample], wall: float, stats: dict[str, Any],
              meter: TreeMeter, driver_cpu: float) -> Result:
    good = [s for s in samples if s.ok]
    errors = Counter(s.status if s.status != "200" else "incomplete" for s in samples if not s.ok)
    latencies = [s.latency for s in good]
    firsts = [s.first_chunk for s in good if s.first_chunk is not None]
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    f50, f99 = percentile(firsts, 50), percentile(firsts, 99)

    def over(value: float | None, nominal: float) -> float | None:
        return None if value is None else (value - nominal) * 1000

    cpu = meter.cpu_seconds
    pss = meter.pss_bytes
    return Result(
        target=target, scenario=scenario.name, requests=len(samples), ok=len(good), errors=dict(errors),
        wall_s=wall, throughput=len(good) / wall if wall else 0.0, p50_s=p50, p99_s=p99,
        overhead_p50_ms=over(p50, scenario.delay), overhead_p99_ms=over(p99, scenario.delay),
        first_p50_s=f50, first_p99_s=f99, first_overhead_p99_ms=over(f99, scenario.first_chunk_nominal),
        provider_requests=int(stats.get("requests", 0)), provider_peak=int(stats.get("peak_in_flight", 0)),
        cpu_ms_per_request=None if cpu is None else cpu * 1000 / max(len(samples), 1),
        cpu_ms_per_ok=None if cpu is None or not good else cpu * 1000 / len(good),
        pss_mb=None if pss is None else pss / 2**20,
        driver_cpu_pct=100 * driver_cpu / wall if wall else 0.0,
    )


class Provider:
    """The driver's handle on the provider's control endpoints."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session, \
                session.request(method, self.url + path, json=body) as response:
            return await response.json()

    async def configure(self, *, delay: float, chunks: int) -> None:
        await self._call("POST", "/_config", {"delay": delay, "chunks": chunks})

    async def reset(self) -> None:
        await self._call("POST", "/_reset")

    async def stats(self) -> dict[str, Any]:
        return await self._call("GET", "/_stats")

    async def settle(self, timeout: float = 60.0) -> None:
        """Wait (bounded) until the provider holds no call: a scenario's leftovers
        (timed-out requests the server still carries) must not load the next one."""
        deadline = time.monotonic() + timeout
        idle = 0
        while time.monotonic() < deadline:
            # Idle for a whole second: a server working through a queue has gaps between calls.
            idle = idle + 1 if (await self.stats())["in_flight"] == 0 else 0
            if idle >= 4:
                return
            await asyncio.sleep(0.25)
        print(f"  (provider still holds {(await self.stats())['in_flight']} calls after {timeout:.0f} s)",
              flush=True)


async def _scenario_run(driver: Driver, target: Target, scenario: Scenario,
                        nonce: str) -> tuple[list[Sample], float]:
    if scenario.count:
        return await at_once(driver, target, count=scenario.count, stream=scenario.stream, nonce=nonce,
                             timeout=scenario.timeout)
    if scenario.callers:
        return await closed(driver, target, callers=scenario.callers, duration=scenario.duration,
                            stream=scenario.stream, nonce=nonce, timeout=scenario.timeout,
                            repeat=scenario.repeat)
    return await paced(driver, target, rate=scenario.rate, duration=scenario.duration, stream=scenario.stream,
                       nonce=nonce, timeout=scenario.timeout)


async def run_target(target: Target, group: Group | None, provider: Provider, plan: list[Scenario],
                     pools: int, ramp: dict[str, Any] | None = None) -> tuple[list[Result], Ramp | None]:
    """The plan against one contender, then (with `ramp`: rates, step_s) its step ramp."""
    results = []
    async with Driver(pools=pools) as driver:
        # Warm-up (not measured): imports, connections, first queries in every worker
        # (enough requests that the kernel hands some to each of several workers).
        await provider.configure(delay=0.05, chunks=2)
        warm = secrets.token_hex(4)
        await at_once(driver, target, count=64, stream=False, nonce=warm, timeout=60)
        await at_once(driver, target, count=64, stream=True, nonce=warm + "s", timeout=60)
        for scenario in plan:
            if scenario.repeat and not target.caches:
                print(f"  {scenario.name}: not run (no response cache for {CACHED_MODEL})", flush=True)
                continue
            await provider.settle()
            await provider.configure(delay=scenario.delay, chunks=scenario.chunks)
            await provider.reset()
            nonce = secrets.token_hex(6)
            cpu0 = time.thread_time()
            with TreeMeter(group) as meter:
                samples, wall = await _scenario_run(driver, target, scenario, nonce)
            driver_cpu = time.thread_time() - cpu0
            stats = await provider.stats()
            result = summarize(target.name, scenario, samples, wall, stats, meter, driver_cpu)
            print(f"  {scenario.name}: {result.ok}/{result.requests} ok in {wall:.2f} s, "
                  f"p50 {_s(result.p50_s)}, p99 {_s(result.p99_s)}, errors {result.errors or '-'}, "
                  f"provider peak {result.provider_peak}, driver CPU {result.driver_cpu_pct:.0f}%",
                  flush=True)
            results.append(result)
        stepped = None
        if ramp is not None and target.dialect == "openai":
            await provider.configure(delay=0.05, chunks=10)
            stepped = await ramp_run(driver, target, rates=ramp["rates"], step_s=ramp["step_s"],
                                     nonce=secrets.token_hex(6), meter=lambda: TreeMeter(group),
                                     settle=provider.settle)
    return results, stepped


# --- the table -----------------------------------------------------------------------------------

def _s(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1f} ms"


def _errors(result: Result) -> str:
    if not result.errors:
        return "0"
    return ", ".join(f"{k}: {v}" for k, v in sorted(result.errors.items()))


def _cpu(result: Result) -> str:
    if result.cpu_ms_per_request is None:
        return "-"
    text = f"{result.cpu_ms_per_request:.2f} ms"
    if result.ok < result.requests:
        per_ok = "no answers" if result.cpu_ms_per_ok is None else f"{result.cpu_ms_per_ok:.2f} ms"
        text += f" ({per_ok})"
    return text


# (label, how to show, the number ratios are taken of; None: no ratio)
ROWS: dict[str, list[tuple[str, Any, Any]]] = {
    "common": [
        ("ok / sent", lambda r: f"{r.ok}/{r.requests}", None),
        ("errors by status", _errors, None),
        ("wall time", lambda r: _s(r.wall_s), lambda r: r.wall_s),
        ("throughput", lambda r: f"{r.throughput:.0f}/s", None),
        ("latency p50 / p99", lambda r: f"{_s(r.p50_s)} / {_s(r.p99_s)}", lambda r: r.p99_s),
        ("overhead over provider p50 / p99", lambda r: f"{_ms(r.overhead_p50_ms)} / {_ms(r.overhead_p99_ms)}",
         None),
    ],
    "stream": [
        ("first chunk p50 / p99", lambda r: f"{_s(r.first_p50_s)} / {_s(r.first_p99_s)}",
         lambda r: r.first_p99_s),
        ("first chunk p99 over provider's", lambda r: _ms(r.first_overhead_p99_ms), None),
    ],
    "tail": [
        ("provider: requests / peak in flight", lambda r: f"{r.provider_requests} / {r.provider_peak}", None),
        ("server CPU per request (per answered one)", _cpu, lambda r: r.cpu_ms_per_request),
        ("server memory (PSS peak, all processes)", lambda r: "-" if r.pss_mb is None
         else f"{r.pss_mb:.0f} MB", lambda r: r.pss_mb),
        ("driver CPU (share of one core)", lambda r: f"{r.driver_cpu_pct:.0f}%", None),
    ],
}


def table(plan: list[Scenario], results: list[Result], targets: list[str]) -> str:
    mine_all = [t for t in targets if t.startswith("this project")]
    others = [t for t in targets if t not in mine_all]
    pairs = [(ours, o) for ours in mine_all for o in others]
    header = ["scenario", "", *targets] + [f"{ours} / {o}" for ours, o in pairs]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    by = {(r.target, r.scenario): r for r in results}
    for scenario in plan:
        rows = ROWS["common"] + (ROWS["stream"] if scenario.stream else []) + ROWS["tail"]
        for i, (label, show, number) in enumerate(rows):
            cells = [f"**{scenario.name}** ({scenario.describe()})" if i == 0 else "", label]
            for t in targets:
                r = by.get((t, scenario.name))
                cells.append(show(r) if r else "not run")
            for ours, o in pairs:
                cells.append(_ratio(number, by.get((ours, scenario.name)), by.get((o, scenario.name))))
            lines.append("| " + " | ".join(cells) + " |")
            if label.startswith("overhead over provider") and (direct := by.get(("direct", scenario.name))):
                cells = ["", "added over direct p50 / p99 (issue 30)"]
                for t in targets:
                    r = by.get((t, scenario.name))
                    cells.append("" if r is None or t == "direct" else _added(r, direct))
                lines.append("| " + " | ".join(cells + [""] * len(pairs)) + " |")
    return "\n".join(lines)


def _added(result: Result, direct: Result) -> str:
    """What a contender adds to the driver's own latency straight to the provider, p50 / p99."""
    if None in (result.p50_s, result.p99_s, direct.p50_s, direct.p99_s):
        return "-"
    return (f"{_ms((result.p50_s - direct.p50_s) * 1000)} / "  # type: ignore[operator]
            f"{_ms((result.p99_s - direct.p99_s) * 1000)}")  # type: ignore[operator]


def _ratio(number: Any, mine: Result | None, theirs: Result | None) -> str:
    if number is None or mine is None or theirs is None:
        return ""
    a, b = number(mine), number(theirs)
    if a is None or b is None or b == 0:
        return ""
    return f"{a / b:.2f}x"


# --- main ------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.loadtest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small smoke run of every scenario")
    # sustained runs last: a server that cannot carry it is left with a queue of
    # abandoned requests that would load whatever ran after it.
    parser.add_argument("--scenarios",
                        default="burst,streams,steady,callers,callers-streams,callers-cached,sustained",
                        type=lambda v: [s.strip() for s in v.split(",") if s.strip()],
                        help="comma-separated subset, run in this order (default: all seven)")
    parser.add_argument("--sustained-duration", type=float, default=0.0, help="seconds of arrivals (30)")
    parser.add_argument("--sustained-stream", type=float, default=0.0, help="seconds per stream (10)")
    parser.add_argument("--steady-duration", type=float, default=0.0, help="seconds (20)")
    parser.add_argument("--litellm", action="store_true", help="also run the LiteLLM proxy")
    parser.add_argument("--litellm-workers", default="1,4", help="worker counts for LiteLLM (1,4)")
    parser.add_argument("--no-direct", action="store_true", help="skip the direct-to-provider column")
    parser.add_argument("--no-gateway", action="store_true", help="skip this project's /api/ai/generate")
    parser.add_argument("--no-front-door", action="store_true",
                        help="skip this project's /v1/chat/completions")
    parser.add_argument("--no-messages", action="store_true",
                        help="skip this project's /v1/messages (translated to the OpenAI-format provider)")
    parser.add_argument("--make-target", default="serve", help="the Makefile target that serves (serve)")
    parser.add_argument("--redis-url", default=os.environ.get("LOADTEST_REDIS_URL", "redis://127.0.0.1:6379/10"))
    parser.add_argument("--database-url", default=os.environ.get("LOADTEST_DATABASE_URL", ""),
                        help="the server's database (default: a fresh SQLite file in the run's temp dir)")
    parser.add_argument("--pools", type=int, default=16, help="driver connection pools (16)")
    parser.add_argument("--json", dest="json_path", help="also write every figure here")
    parser.add_argument("--plot", dest="plot_path", help="draw the ramp's added p99 against rate here (SVG)")
    parser.add_argument("--no-ramp", action="store_true", help="skip the step ramp")
    parser.add_argument("--ramp-rates", default="",
                        type=lambda v: tuple(float(r) for r in v.split(",") if r.strip()),
                        help=f"requests/s of the ramp's steps ({','.join(map(str, RAMP_RATES))}; "
                             f"--quick: {','.join(map(str, QUICK_RATES))})")
    parser.add_argument("--ramp-step", type=float, default=0.0, help="seconds per ramp step (8; --quick: 1)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir with the logs")
    args = parser.parse_args(argv)
    unknown = set(args.scenarios) - {"burst", "streams", "sustained", "steady", "callers", "callers-streams",
                                     "callers-cached"}
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    return args


@dataclass
class _Run:
    """One load run: what every contender is measured against, and what the contenders gave."""

    plan: list[Scenario]
    provider_url: str
    provider: Provider
    pools: int
    workdir: Any
    ramp: dict[str, Any] | None = None
    results: list[Result] = field(default_factory=list)
    ramps: list[Ramp] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    async def contender(self, name: str, starter: Any, dialect: str | None = None) -> None:
        """Start one contender's server (None: the provider itself), run the plan against it, stop it.
        A contender that fails is noted in `failures`: the others' figures are kept."""
        print(f"\n{name}:", flush=True)
        server = None
        try:
            server = await asyncio.to_thread(starter)
            if server is None:
                target, group = Target(name, self.provider_url, "openai", caches=True), None
            else:
                spoken = dialect or ("gateway" if isinstance(server, GatewayServer) else "openai")
                caches = isinstance(server, GatewayServer) and spoken == "openai"
                target, group = Target(name, server.url, spoken, server.token, caches), server.group
            results, stepped = await run_target(target, group, self.provider, self.plan, self.pools,
                                                ramp=self.ramp)
            self.results.extend(results)
            if stepped is not None:
                self.ramps.append(stepped)
            self.targets.append(name)
        except Exception as err:  # one contender failing must not lose the others' figures
            self.failures.append(f"{name}: {type(err).__name__}: {err}")
            print(f"  FAILED: {err} (logs in {self.workdir})", flush=True)
        finally:
            if server is not None:
                await asyncio.to_thread(server.stop)


async def amain(args: argparse.Namespace) -> int:
    plan = scenarios(args)
    workdir = make_workdir()
    print(f"load run: {', '.join(s.name for s in plan)}{' (quick)' if args.quick else ''}; "
          f"logs in {workdir}", flush=True)
    provider_proc = ProviderProcess(workdir).start()
    ramp = None if args.no_ramp else {"rates": args.ramp_rates or (QUICK_RATES if args.quick else RAMP_RATES),
                                      "step_s": args.ramp_step or (1.0 if args.quick else 8.0)}
    run = _Run(plan, provider_proc.url, Provider(provider_proc.url), args.pools, workdir, ramp=ramp)

    def gateway() -> GatewayServer:
        return GatewayServer(workdir, provider_url=provider_proc.url, redis_url=args.redis_url,
                             database_url=args.database_url, make_target=args.make_target).start()

    try:
        if not args.no_direct:
            await run.contender("direct", lambda: None)
        if not args.no_gateway:
            await run.contender("this project", gateway)
        if not args.no_front_door:
            await run.contender("this project /v1", gateway, dialect="openai")
        if not args.no_messages:
            await run.contender("this project /v1/messages", gateway, dialect="anthropic")
        if args.litellm:
            for workers in [int(w) for w in args.litellm_workers.split(",") if w.strip()]:
                await run.contender(f"LiteLLM {workers}w", lambda w=workers: LiteLLMServer(
                    workdir, provider_url=provider_proc.url, workers=w).start())
    finally:
        provider_proc.stop()
    return _report(run, args)


def _report(run: _Run, args: argparse.Namespace) -> int:
    """Print the table (and write the JSON when asked); 1 when a contender failed."""
    print("\n" + table(run.plan, run.results, run.targets))
    if run.ramps:
        print("\nStep ramp (provider 50 ms, open loop, added p99 limit 20 ms):\n" + ramp_table(run.ramps))
    print(f"\nCPU and memory are of the server's whole process tree; `direct` has no server. "
          f"{os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.")
    if args.json_path:
        with open(args.json_path, "w") as out:
            json.dump({"scenarios": [asdict(s) for s in run.plan],
                       "results": [asdict(r) for r in run.results],
                       "ramps": [{**asdict(r), "best_rate": r.best_rate, "failing_rate": r.failing_rate}
                                 for r in run.ramps],
                       "failures": run.failures}, out, indent=2)
    if args.plot_path and run.ramps and ramp_plot(run.ramps, Path(args.plot_path)):
        print(f"plot: {args.plot_path}")
    for failure in run.failures:
        print(f"FAILED {failure}", file=sys.stderr)
    if args.keep or run.failures:
        print(f"logs kept in {run.workdir}")
    else:
        remove_workdir(run.workdir)
    return 1 if run.failures else 0


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(amain(parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
