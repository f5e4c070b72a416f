"""CPU per supervised stream when the primary cuts half of them, against an
undisturbed run measured in the same run (issue 24; target: within 1.5x).

This project as `make serve` runs it (bench.loadtest.procs.GatewayServer,
Redis on REDIS_URL or the local default), its `openai` upstream with two
endpoints on two loopback providers (bench.loadtest.provider): a primary,
and a fallback (priority strategy). `COUNT` streams are opened at once on
/v1/chat/completions, each 10 chunks over 1 s; in the disturbed runs the
primary cuts every second stream half-way and the gateway continues it on
the fallback (assistant prefill). The runs alternate (undisturbed,
disturbed) `ROUNDS` times; every caller's text is checked whole. The
figure is the gateway's process tree's CPU seconds per stream (user +
system), the median per kind, and their ratio.

    .venv/bin/python -m bench.bench_streams [--count 200] [--rounds 3]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import time

import aiohttp

from bench.loadtest.procs import (
    ROOT,
    GatewayServer,
    Group,
    ProviderProcess,
    TreeMeter,
    make_workdir,
    remove_workdir,
    wait_http,
)

COUNT = 200
ROUNDS = 3


def _configure(gateway: GatewayServer, primary: str, fallback: str) -> None:
    """Two endpoints (primary, fallback), no breaker (every cut is continued,
    none avoided), the seeded stream timers."""
    script = (
        "from resilience.models import Endpoint, Upstream\n"
        "u = Upstream.objects.get(name='openai')\n"
        "u.endpoint_strategy = 'priority'; u.retry_total = 2; u.breaker_enabled = False\n"
        "u.full_clean(validate_unique=False); u.save()\n"
        f"Endpoint.objects.create(upstream=u, name='primary', base_url={primary + '/v1'!r}, priority=0)\n"
        f"Endpoint.objects.create(upstream=u, name='fallback', base_url={fallback + '/v1'!r}, priority=1)\n")
    done = subprocess.run([sys.executable, "manage.py", "shell", "-c", script],
                          cwd=ROOT, env=gateway.env, capture_output=True, text=True, timeout=300)
    if done.returncode:
        raise RuntimeError(f"configuring the upstream failed:\n{done.stdout}\n{done.stderr}")


async def _stream(session: aiohttp.ClientSession, url: str, token: str, question: str) -> str:
    body = {"model": "gpt-4o-mini", "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": question}]}
    text = []
    async with session.post(url, json=body, headers={"Authorization": f"Bearer {token}"}) as response:
        if response.status != 200:
            return f"HTTP {response.status}"
        async for line in response.content:
            if line.startswith(b"data: {"):
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    return f"error {chunk['error'].get('message')}"
                for choice in chunk.get("choices") or ():
                    text.append(choice["delta"].get("content") or "")
    return "".join(text)


async def _run(gateway: GatewayServer, count: int, nonce: str) -> tuple[float, int]:
    """CPU seconds of the gateway's tree over `count` streams at once, and how many came back whole."""
    url = gateway.url + "/v1/chat/completions"
    questions = [f"bench {nonce} stream {i}" for i in range(count)]
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        with TreeMeter(gateway.group) as meter:
            texts = await asyncio.gather(*(_stream(session, url, gateway.token, q) for q in questions))
    whole = sum(text == f"Loopback answer to: {q[-40:]}" for text, q in zip(texts, questions, strict=True))
    return meter.cpu_seconds or 0.0, whole


async def _configure_provider(url: str, **config: int) -> None:
    async with aiohttp.ClientSession() as session, session.post(url + "/_config", json=config) as response:
        response.raise_for_status()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=COUNT)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    args = parser.parse_args()
    workdir = make_workdir()
    primary = ProviderProcess(workdir).start()
    fallback = ProviderProcess(workdir)
    fallback.group.log = workdir / "fallback.log"
    fallback.start()
    gateway = GatewayServer(workdir, provider_url=primary.url,
                            redis_url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    try:
        gateway.prepare()
        _configure(gateway, primary.url, fallback.url)
        # GatewayServer.start() without its prepare(), which would reset the policy just set.
        argv = ["make", "--no-print-directory", gateway.make_target, "HOST=127.0.0.1", f"PORT={gateway.port}"]
        gateway.group = Group(argv, env=gateway.env, log=workdir / "gateway.log").start()
        wait_http(gateway.url + "/healthz", timeout=180, proc=gateway.group.proc)
        asyncio.run(_run(gateway, 20, "warm"))  # workers up, pools open, imports done
        per_stream: dict[str, list[float]] = {"undisturbed": [], "half cut": []}
        failures = 0
        for round_ in range(args.rounds):
            for kind, cut_every in (("undisturbed", 0), ("half cut", 2)):
                asyncio.run(_configure_provider(primary.url, cut_every=cut_every))
                cpu, whole = asyncio.run(_run(gateway, args.count, f"{round_}{kind}{secrets.token_hex(3)}"))
                failures += args.count - whole
                per_stream[kind].append(cpu / args.count)
                time.sleep(0.5)
        base = statistics.median(per_stream["undisturbed"])
        cut = statistics.median(per_stream["half cut"])
        print(f"| run | CPU ms per stream (median of {args.rounds}) | streams complete |")
        print("|---|---|---|")
        print(f"| undisturbed | {base * 1000:.2f} | {args.count} x {args.rounds} |")
        print(f"| primary cuts half | {cut * 1000:.2f} | {'all' if not failures else f'{failures} not'} |")
        print(f"\nratio half cut / undisturbed: {cut / base:.2f}x (target <= 1.5x)")
        return 0 if failures == 0 else 1
    finally:
        gateway.stop()
        fallback.stop()
        primary.stop()
        remove_workdir(workdir)


if __name__ == "__main__":
    sys.exit(main())
