"""The async client's network layer against the library's, side by side in
one run on one event loop (uvloop, as `make serve` runs), against a local
nginx (the Python fake when nginx is missing):

- httpx2's own transport (httpcore2 over anyio: a cancel scope per read and
  write) is the baseline;
- the same httpcore2 pool and HTTP/1.1 code over a plain asyncio protocol
  (`bench.httpcore_contender`: the async client's transport until issue 30);
- aiohttp (llhttp's C parser) behind the same interface
  (`bench.aiohttp_contender`: issue 30 asked whether it pays; it did not);
- `resilience.client.aionet.Transport`: httptools' parser (llhttp) on one
  asyncio protocol per connection, a pool of our own (what the async client
  uses since issue 30);
- the whole async client (`await upstream(name).aget(...)`: policy, breaker,
  call record, metrics) over it, for scale.

Each contender is timed one GET at a time and 64 at once (wall time per GET),
in alternating rounds; the ratio is the median of per-round ratios to the
baseline. Keeping our own backend over the library's is worth it only when it
is cheaper here.

A second table prices what the /v1 front door pays: this process's CPU per
call (`time.process_time`, the server out of it: the load test's provider in
a process of its own), a completion answered at once and a stream of 10
chunks, the three transports in alternating rounds.

A third prices the stream supervisor's read on our transport (32 streams at
once, chunks 20 ms apart, so that most reads wait): a timer of its own
around each read of the body's iterator, as the supervisor read until
issue 30's last change, against `next_within`, which waits under the
connection's one read timer and arms none when the chunk is already here.
"""
from __future__ import annotations

import contextlib
import json
import statistics
import time
import urllib.request
from typing import Any

from bench.common import Nginx, async_paired, django_setup, fmt_time, table

N = 200
ROUNDS = 15
CONCURRENT = 64


async def _run(url: str) -> list[tuple[object, ...]]:
    import httpx2

    from bench.aiohttp_contender import Transport as AiohttpTransport
    from bench.httpcore_contender import Transport as HttpcoreTransport
    from resilience import upstream
    from resilience.client.aionet import Transport

    library = httpx2.AsyncHTTPTransport(limits=httpx2.Limits(max_connections=CONCURRENT), trust_env=False)
    ours, over_httpcore, over_aiohttp = (kind(max_connections=CONCURRENT, keepalive_expiry=4.0)
                                         for kind in (Transport, HttpcoreTransport, AiohttpTransport))
    timeout = {"connect": 1.0, "read": 5.0, "write": 5.0, "pool": 5.0}

    def request() -> httpx2.Request:
        made = httpx2.Request("GET", url + "/bench")
        made.extensions["timeout"] = timeout
        return made

    def via(send: Any) -> Any:
        """One GET through `send` (a transport's), its body read and closed."""
        async def call() -> object:
            response = await send(request())
            try:
                return await response.aread()
            finally:
                await response.aclose()
        return call

    client = upstream("bench-aionet")

    async def via_client() -> object:
        return (await client.aget("/bench", cache=False)).content

    contenders = {"httpx2's transport (httpcore2 over anyio)": via(library.handle_async_request),
                  "httpcore2 over asyncio (before issue 30)": via(lambda r: over_httpcore.send(r, _nothing)),
                  "aiohttp behind the same interface (llhttp)": via(lambda r: over_aiohttp.send(r, _nothing)),
                  "aionet.Transport (httptools)": via(lambda r: ours.send(r, _nothing)),
                  "async client: aget (policy, breaker, record, metrics)": via_client}
    rows: list[tuple[object, ...]] = []
    baseline = next(iter(contenders))
    for concurrent in (1, CONCURRENT):
        measured = await async_paired(contenders, baseline, n=N * (4 if concurrent > 1 else 1), rounds=ROUNDS,
                                      concurrent=concurrent)
        for name, (seconds, ratio, _lag) in measured.items():
            rows.append((f"{name}, {concurrent} at once", fmt_time(seconds),
                         "1.00 (baseline)" if name == baseline else f"{ratio:.2f}"))
    for transport in (library, ours, over_httpcore, over_aiohttp):
        await transport.aclose()
    return rows


def _nothing() -> None:
    pass


async def _cpu_rows(url: str) -> list[tuple[object, ...]]:
    """Client CPU per call of each transport (see the module docstring)."""
    import httpx2

    from bench.aiohttp_contender import Transport as AiohttpTransport
    from bench.httpcore_contender import Transport as HttpcoreTransport
    from resilience.client.aionet import Transport

    rows: list[tuple[object, ...]] = []
    for stream in (False, True):
        body = json.dumps({"model": "gpt-4o-mini", "max_tokens": 200, "stream": stream,
                           "messages": [{"role": "user", "content": "bench"}]}).encode()
        transports = {"httpcore2 and h11 (before issue 30)": HttpcoreTransport(max_connections=16,
                                                                                keepalive_expiry=4),
                      "aiohttp (llhttp)": AiohttpTransport(max_connections=16, keepalive_expiry=4),
                      "aionet.Transport (httptools)": Transport(max_connections=16, keepalive_expiry=4)}

        async def call(transport: object, body: bytes = body) -> None:
            request = httpx2.Request("POST", url + "/v1/chat/completions", content=body,
                                     headers={"Content-Type": "application/json"})
            request.extensions["timeout"] = {"connect": 1.0, "read": 5.0, "write": 5.0, "pool": 5.0}
            response = await transport.send(request, lambda: None)  # type: ignore[attr-defined]
            if response.status_code != 200:
                raise RuntimeError(f"the provider answered {response.status_code}")
            try:
                async for _chunk in response.stream:
                    pass
            finally:
                await response.aclose()

        cpu: dict[str, list[float]] = {name: [] for name in transports}
        for transport in transports.values():
            for _ in range(50):
                await call(transport)
        for _ in range(ROUNDS):
            for name, transport in transports.items():
                started = time.process_time()
                for _ in range(N):
                    await call(transport)
                cpu[name].append((time.process_time() - started) / N)
        baseline = next(iter(transports))
        kind = "stream of 10 chunks" if stream else "completion"
        for name, transport in transports.items():
            ratio = statistics.median(a / b for a, b in zip(cpu[name], cpu[baseline], strict=True))
            rows.append((f"{name}, {kind}", fmt_time(statistics.median(cpu[name])),
                         "1.00 (baseline)" if name == baseline else f"{ratio:.2f}"))
            await transport.aclose()  # type: ignore[attr-defined]
    return rows


async def _read_rows(url: str) -> list[tuple[object, ...]]:
    """The stream supervisor's read on our transport: each chunk under a timer of its own around
    the body's iterator (before) against the connection's `next_within` (one timer, the
    connection's, none when the chunk is here): CPU per stream of 10 chunks 20 ms apart,
    32 streams at once."""
    import asyncio

    import httpx2

    from resilience.client.aionet import Transport

    body = json.dumps({"model": "gpt-4o-mini", "stream": True,
                       "messages": [{"role": "user", "content": "bench"}]})
    transport = Transport(max_connections=64, keepalive_expiry=4)

    async def timer_per_read(response: Any) -> None:
        chunks = aiter(response.stream)
        with contextlib.suppress(StopAsyncIteration):
            while True:
                async with asyncio.timeout(5.0):
                    await anext(chunks)

    async def within(response: Any) -> None:
        with contextlib.suppress(StopAsyncIteration):
            while True:
                await response.stream.next_within(5.0)

    async def one(read: Any) -> None:
        request = httpx2.Request("POST", url + "/v1/chat/completions", content=body.encode(),
                                 headers={"Content-Type": "application/json"})
        request.extensions["timeout"] = {"connect": 1.0, "read": 5.0, "write": 5.0, "pool": 5.0}
        response = await transport.send(request, _nothing)
        try:
            await read(response)
        finally:
            await response.aclose()

    reads = {"a timer per read around the iterator (before)": timer_per_read, "next_within (now)": within}
    cpu: dict[str, list[float]] = {name: [] for name in reads}
    await asyncio.gather(*(one(read) for read in reads.values() for _ in range(32)))
    for index in range(ROUNDS):
        for name in (list(reads) if index % 2 else list(reversed(reads))):
            started = time.process_time()
            for _ in range(2):
                await asyncio.gather(*(one(reads[name]) for _ in range(32)))
            cpu[name].append((time.process_time() - started) / 64)
    await transport.aclose()
    baseline = next(iter(reads))
    return [(name, fmt_time(statistics.median(cpu[name])),
             "1.00 (baseline)" if name == baseline else
             f"{statistics.median(a / b for a, b in zip(cpu[name], cpu[baseline], strict=True)):.2f}")
            for name in reads]


def _provider_tables() -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    """The CPU table (a provider answering at once) and the read table (chunks 20 ms apart)."""
    import uvloop

    from bench.loadtest.procs import ProviderProcess, make_workdir, remove_workdir

    def configure(delay: float) -> None:
        config = json.dumps({"delay": delay, "chunks": 10}).encode()
        urllib.request.urlopen(urllib.request.Request(provider.url + "/_config", data=config, headers={
            "Content-Type": "application/json"}), timeout=10).close()

    workdir = make_workdir()
    provider = ProviderProcess(workdir).start()
    try:
        configure(0.0)
        cpu = uvloop.run(_cpu_rows(provider.url))
        configure(0.2)
        return cpu, uvloop.run(_read_rows(provider.url))
    finally:
        provider.stop()
        remove_workdir(workdir)


def main() -> None:
    django_setup()
    from resilience.models import Upstream
    from resilience.telemetry.calllog import call_log_discard
    from tests.support.fake_upstream import FakeUpstream

    nginx = Nginx().start() if Nginx.available() else None
    fake = None if nginx is not None else FakeUpstream().start()
    url = nginx.url if nginx is not None else fake.url
    Upstream.objects.update_or_create(name="bench-aionet", defaults={
        "base_url": url, "retry_total": 0, "pool_size": CONCURRENT, "connect_timeout": 1, "read_timeout": 5,
        "deadline": 10, "cache_ttl": 0})
    try:
        import uvloop

        rows = uvloop.run(_run(url))
    finally:
        call_log_discard()
        if nginx is not None:
            nginx.stop()
        if fake is not None:
            fake.stop()
    against = "nginx" if nginx is not None else "Python fake"
    table(f"Async network layer: per GET against {against} (median of {ROUNDS} alternating rounds)",
          ("path", "per GET", "ratio"), rows)
    cpu, reads = _provider_tables()
    table(f"Client CPU per POST against the load test's provider in its own process "
          f"(median of {ROUNDS} alternating rounds of {N})", ("path", "CPU per call", "ratio"), cpu)
    table(f"The stream supervisor's read: client CPU per stream of 10 chunks 20 ms apart, 32 at once "
          f"(median of {ROUNDS} alternating rounds of 64)", ("read", "CPU per stream", "ratio"), reads)


if __name__ == "__main__":
    main()
