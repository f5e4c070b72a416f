"""The load tool (bench/loadtest) against its own provider: keeps it from rotting.

No server: the driver goes straight to the loopback provider, in one event loop,
for a handful of short calls and streams.
"""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from bench.loadtest.driver import CACHED_MODEL, Driver, Target, at_once, paced, percentile
from bench.loadtest.procs import ROOT, GatewayServer
from bench.loadtest.provider import ProviderConfig, provider_start
from bench.loadtest.ramp import Ramp, Step, closed, ramp_plot, ramp_run, ramp_table, step_measure


async def _run() -> dict:
    runner, port = await provider_start(config=ProviderConfig(delay=0.2, chunks=4))
    try:
        target = Target("direct", f"http://127.0.0.1:{port}", "openai")
        async with Driver(pools=4) as driver:
            plain, plain_wall = await at_once(driver, target, count=12, stream=False, nonce="t", timeout=5)
            streams, _ = await at_once(driver, target, count=8, stream=True, nonce="t", timeout=5)
            spaced, _ = await paced(driver, target, rate=40, duration=0.25, stream=False, nonce="p",
                                    timeout=5)
        async with aiohttp.ClientSession() as session, \
                session.get(f"http://127.0.0.1:{port}/_stats") as response:
            stats = await response.json()
        return {"plain": plain, "plain_wall": plain_wall, "streams": streams, "spaced": spaced,
                "stats": stats}
    finally:
        await runner.cleanup()


def test_driver_against_provider_counts_every_request():
    out = asyncio.run(_run())
    plain, streams, spaced, stats = out["plain"], out["streams"], out["spaced"], out["stats"]

    assert [s.status for s in plain + streams + spaced] == ["200"] * 30
    assert all(s.ok for s in plain + streams + spaced)
    assert stats["requests"] == len(plain) + len(streams) + len(spaced) == 30
    assert stats["streams"] == 8
    assert stats["in_flight"] == 0
    assert stats["peak_in_flight"] >= 12  # the 12 calls were held together
    # Held together, not one after another: about one delay, far from twelve.
    assert 0.2 <= out["plain_wall"] < 1.5
    for sample in streams:  # 4 chunks over 0.2 s: the first after about 50 ms
        assert sample.first_chunk is not None and 0.04 <= sample.first_chunk < sample.latency
    assert percentile([s.latency for s in spaced], 50) >= 0.2


def test_percentile_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([3.0], 99) == 3.0
    assert percentile([], 50) is None


def test_the_server_under_load_runs_in_this_tools_environment(tmp_path):
    # Issue 25, item 8: `make serve` was started with the checkout's .venv,
    # which an environment made another way does not have.
    server = GatewayServer(tmp_path, provider_url="http://127.0.0.1:9", redis_url="redis://127.0.0.1:9/0")
    plan = subprocess.run([*server.make_argv(), "--dry-run"], cwd=ROOT, capture_output=True, text=True,
                          check=True, env={**os.environ, "MAKEFLAGS": ""}).stdout
    here = Path(sys.executable).parent
    assert f"{here}/gunicorn project.asgi:application" in plan
    assert f"{here}/python manage.py migrate" in plan
    assert f"{here}/python -m project.startup" in plan


async def _ramp_direct() -> dict:
    runner, port = await provider_start(config=ProviderConfig(delay=0.05, chunks=2))
    try:
        target = Target("direct", f"http://127.0.0.1:{port}", "openai")
        async with Driver(pools=2) as driver:
            callers, _ = await closed(driver, target, callers=4, duration=0.3, stream=False, nonce="c",
                                      timeout=5)
            ramp = await ramp_run(driver, target, rates=(10, 20), step_s=0.3, nonce="r")
        return {"callers": callers, "ramp": ramp}
    finally:
        await runner.cleanup()


def test_closed_callers_and_the_ramp_against_the_provider(tmp_path):
    out = asyncio.run(_ramp_direct())
    callers, ramp = out["callers"], out["ramp"]
    # Four callers, each one request at a time: more than four requests, every one answered.
    assert len(callers) > 4 and all(s.ok for s in callers)
    assert [step.rate for step in ramp.steps] == [10, 20]
    assert [(step.sent, step.ok) for step in ramp.steps] == [(3, 3), (6, 6)]
    assert all(step.added_p99_ms is not None for step in ramp.steps)
    table = ramp_table([ramp])
    assert table.splitlines()[2].startswith("| direct | ")
    svg = tmp_path / "ramp.svg"
    assert ramp_plot([ramp], svg)
    assert svg.read_text().lstrip().startswith("<?xml") and "<svg" in svg.read_text()


def test_the_cached_scenarios_callers_cycle_through_its_distinct_requests_of_the_cached_model():
    """`closed(..., repeat=3)`: every request names CACHED_MODEL, and there are three distinct ones
    however many are sent (cache hits after the first three)."""
    sent: list[bytes] = []

    class Recording(Target):
        def body(self, **kwargs) -> bytes:
            sent.append(body := super().body(**kwargs))
            return body

    async def run() -> list:
        runner, port = await provider_start(config=ProviderConfig(delay=0.0, chunks=2))
        try:
            async with Driver(pools=2) as driver:
                target = Recording("direct", f"http://127.0.0.1:{port}", "openai")
                samples, _ = await closed(driver, target, callers=2, duration=0.3, stream=False, nonce="c",
                                          timeout=5, repeat=3)
            return samples
        finally:
            await runner.cleanup()

    samples = asyncio.run(run())
    assert len(samples) > 6 and all(s.ok for s in samples)
    bodies = [json.loads(body) for body in sent]
    assert {body["model"] for body in bodies} == {CACHED_MODEL}
    assert len({body["messages"][0]["content"] for body in bodies}) == 3


def _step(rate: float, sent: int, ok: int, p99_ms: float) -> Step:
    return Step(rate=rate, sent=sent, ok=ok, achieved=ok, added_p50_ms=1.0, added_p99_ms=p99_ms,
                cpu_ms_per_request=None)


def test_ramp_throughput_is_the_last_step_held_before_it_broke():
    ramp = Ramp("ours", [_step(100, 100, 100, 3.0), _step(200, 200, 200, 19.0), _step(300, 300, 300, 25.0),
                         _step(400, 400, 390, 900.0)])
    assert ramp.best_rate == 200  # 300 passed the 20 ms limit, 400 failed
    assert ramp.failing_rate == 400
    # One step over the limit between held ones is a hiccup; two in a row end the ramp.
    assert Ramp("x", [_step(100, 10, 10, 30.0), _step(200, 10, 10, 1.0)]).best_rate == 200
    assert Ramp("x", [_step(100, 10, 10, 1.0), _step(200, 10, 10, 30.0), _step(300, 10, 10, 30.0),
                      _step(400, 10, 10, 1.0)]).best_rate == 100
    failed = Ramp("x", [_step(100, 10, 10, 1.0), _step(200, 10, 9, 1.0), _step(300, 10, 10, 1.0)])
    assert failed.best_rate == 100
    assert Ramp("x", [_step(100, 10, 10, 1.0)]).failing_rate is None
    assert "| x | 100/s | none reached |" in ramp_table([Ramp("x", [_step(100, 10, 10, 1.0)])])


def test_a_step_without_answers_has_no_percentiles():
    step = step_measure(50, [], 1.0, None)
    assert (step.sent, step.ok, step.added_p99_ms, step.within) == (0, 0, None, False)


def test_a_server_that_never_comes_up_leaves_no_process_behind(tmp_path):
    """A contender whose readiness wait fails has its whole process group
    stopped (one left running loaded every later run of the tool)."""
    import psutil
    import pytest

    from bench.loadtest.procs import Group, _up_or_stopped

    group = Group([sys.executable, "-c", "import subprocess, sys, time; "
                   "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"],
                  env=dict(os.environ), log=tmp_path / "server.log").start()
    leader = psutil.Process(group.proc.pid)
    for _ in range(50):
        if leader.children():
            break
        time.sleep(0.1)
    spawned = [leader, *leader.children(recursive=True)]
    assert len(spawned) == 2

    def never_ready() -> None:
        raise TimeoutError("did not answer")

    with pytest.raises(TimeoutError):
        _up_or_stopped(group, never_ready)
    _, alive = psutil.wait_procs(spawned, timeout=10)
    assert alive == []


def test_the_table_gives_what_each_contender_adds_over_direct():
    from bench.loadtest.__main__ import Result, Scenario, table

    def result(target: str, p50: float, p99: float) -> Result:
        return Result(target=target, scenario="steady", requests=10, ok=10, errors={}, wall_s=1.0,
                      throughput=10.0, p50_s=p50, p99_s=p99, overhead_p50_ms=None, overhead_p99_ms=None,
                      first_p50_s=None, first_p99_s=None, first_overhead_p99_ms=None, provider_requests=10,
                      provider_peak=1, cpu_ms_per_request=0.456, cpu_ms_per_ok=0.456, pss_mb=None,
                      driver_cpu_pct=1.0)

    plan = [Scenario("steady", stream=False, delay=0.05, rate=10, duration=1)]
    text = table(plan, [result("direct", 0.0510, 0.0530), result("this project /v1", 0.0518, 0.0551)],
                 ["direct", "this project /v1"])
    added = next(line for line in text.splitlines() if "added over direct" in line)
    assert "| +0.8 ms / +2.1 ms |" in added
    assert "| 0.46 ms |" in text  # CPU per request, two decimals
