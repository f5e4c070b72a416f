"""The cost figures of issue 30: CPU per call at 32 callers, and the step ramp.

- `closed`: `callers` concurrent callers (32), each sending its next request
  as soon as the last one answered, for `duration` seconds, the provider
  answering in 50 ms: CPU per call (server process tree) and added p50/p99
  (`bench.loadtest.__main__` runs it as the scenarios `callers` and
  `callers-streams`, streams of 10 chunks).
- `ramp`: open-loop arrivals at a rate raised step by step (`RAMP_RATES`),
  each step `step_s` seconds against a 50 ms provider (after one unmeasured
  second at the first rate), until a request fails or two steps in a row
  pass `P99_LIMIT_MS` (20 ms) of added p99. A contender's throughput is the
  highest rate whose added p99 stayed under the limit without failures
  before the ramp stopped (one step over the limit between two held ones is
  a hiccup of a shared box, and shows in the steps); its breaking rate is
  the first that failed a request.

`ramp_plot` draws added p99 against rate for every contender (matplotlib,
from requirements-dev; a message and no file when it is missing).
"""
from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.loadtest.driver import CACHED_MODEL, MODEL, Driver, Sample, Target, paced, percentile

RAMP_RATES = (50, 100, 200, 300, 400, 500, 600, 800, 1000, 1200, 1500, 2000, 2500, 3000)
QUICK_RATES = (20, 40, 80)
P99_LIMIT_MS = 20.0
PROVIDER_DELAY = 0.05


async def closed(driver: Driver, target: Target, *, callers: int, duration: float, stream: bool,
                 nonce: str, timeout: float, repeat: int = 0) -> tuple[list[Sample], float]:
    """`callers` callers, each one request at a time, for `duration` seconds; with `repeat`, the
    requests cycle through that many distinct ones of CACHED_MODEL (cache hits after the first)."""
    samples: list[Sample] = []
    numbers = itertools.count()
    start = time.perf_counter()
    end = start + duration
    model = CACHED_MODEL if repeat else MODEL

    async def caller() -> None:
        while time.perf_counter() < end:
            seq = next(numbers)
            samples.append(await driver.fire(target, nonce=nonce, seq=seq % repeat if repeat else seq,
                                             stream=stream, timeout=timeout, model=model))

    await asyncio.gather(*(caller() for _ in range(callers)))
    return samples, time.perf_counter() - start


@dataclass
class Step:
    rate: float
    sent: int
    ok: int
    achieved: float  # answered per second
    added_p50_ms: float | None
    added_p99_ms: float | None
    cpu_ms_per_request: float | None

    @property
    def failed(self) -> bool:
        return self.ok < self.sent

    @property
    def within(self) -> bool:
        return not self.failed and self.added_p99_ms is not None and self.added_p99_ms < P99_LIMIT_MS


@dataclass
class Ramp:
    target: str
    steps: list[Step] = field(default_factory=list)

    @property
    def best_rate(self) -> float | None:
        """The highest rate held (added p99 under the limit, no failure) before the ramp broke:
        a failure or two steps in a row over the limit."""
        held, over = None, 0
        for step in self.steps:
            over = 0 if step.within else over + 1
            if step.failed or over >= 2:
                break
            if step.within:
                held = step.rate
        return held

    @property
    def failing_rate(self) -> float | None:
        return next((step.rate for step in self.steps if step.failed), None)


def step_measure(rate: float, samples: list[Sample], wall: float, cpu_s: float | None) -> Step:
    good = [s.latency for s in samples if s.ok]
    p50, p99 = percentile(good, 50), percentile(good, 99)
    return Step(rate=rate, sent=len(samples), ok=len(good), achieved=len(good) / wall if wall else 0.0,
                added_p50_ms=None if p50 is None else (p50 - PROVIDER_DELAY) * 1000,
                added_p99_ms=None if p99 is None else (p99 - PROVIDER_DELAY) * 1000,
                cpu_ms_per_request=None if cpu_s is None else cpu_s * 1000 / max(len(samples), 1))


async def ramp_run(driver: Driver, target: Target, *, rates: tuple[float, ...], step_s: float,
                   nonce: str, meter: Any = None, settle: Any = None) -> Ramp:
    """Raise the rate step by step (see the module docstring); `meter()` gives a
    context manager with `cpu_seconds` (or None), `settle()` waits for the provider to empty."""
    ramp = Ramp(target.name)
    await paced(driver, target, rate=rates[0], duration=1.0, stream=False, nonce=f"{nonce}-warm", timeout=10)
    over = 0
    for rate in rates:
        if settle is not None:
            await settle()
        measured = meter() if meter is not None else None
        if measured is not None:
            measured.__enter__()
        samples, wall = await paced(driver, target, rate=rate, duration=step_s, stream=False,
                                    nonce=f"{nonce}-{rate:g}", timeout=10)
        if measured is not None:
            measured.__exit__(None, None, None)
        step = step_measure(rate, samples, wall, None if measured is None else measured.cpu_seconds)
        ramp.steps.append(step)
        print(f"  ramp {rate:g}/s: {step.ok}/{step.sent} ok, added p50 {_ms(step.added_p50_ms)}, "
              f"p99 {_ms(step.added_p99_ms)}", flush=True)
        over = 0 if step.within else over + 1
        if step.failed or over >= 2:
            break
    return ramp


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1f} ms"


def ramp_table(ramps: list[Ramp]) -> str:
    lines = ["| contender | highest rate with added p99 < 20 ms, no failure | first rate with failures "
             "| steps (rate: added p99) |", "|---|---|---|---|"]
    for ramp in ramps:
        steps = ", ".join(f"{s.rate:g}: {_ms(s.added_p99_ms)}{' (fail)' if s.failed else ''}"
                          for s in ramp.steps)
        best, failing = ramp.best_rate, ramp.failing_rate
        lines.append(f"| {ramp.target} | {'-' if best is None else f'{best:g}/s'} "
                     f"| {'none reached' if failing is None else f'{failing:g}/s'} | {steps} |")
    return "\n".join(lines)


def ramp_plot(ramps: list[Ramp], path: Path) -> bool:
    """Added p99 against rate, one line per contender, as an SVG at `path`; False without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed (requirements-dev.txt): no plot", flush=True)
        return False
    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(7, 4))
    for ramp in ramps:
        points = [(s.rate, s.added_p99_ms) for s in ramp.steps if s.added_p99_ms is not None]
        if points:
            axes.plot(*zip(*points, strict=True), marker="o", label=ramp.target)
    axes.axhline(P99_LIMIT_MS, color="grey", linestyle="--", linewidth=1, label="20 ms")
    axes.set_xlabel("requests per second (open loop, provider 50 ms)")
    axes.set_ylabel("added p99 (ms)")
    axes.set_yscale("symlog", linthresh=10)
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="svg")
    pyplot.close(figure)
    return True
