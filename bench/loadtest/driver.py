"""The load driver: asyncio + aiohttp over many independent connection pools.

One `ClientSession` holding hundreds of connections spends its time in its own
pool bookkeeping and makes the driver the bottleneck; requests here go round
robin over `pools` sessions (16 by default), each with an unlimited connector.

A `Target` says where requests go and in which dialect: `openai` (the
provider itself, the LiteLLM proxy: `POST /v1/chat/completions`, streams end
with `data: [DONE]`), `anthropic` (this project's Messages front door:
`POST /v1/messages` with `x-api-key`, streams end with `event: message_stop`)
or `gateway` (this project: `POST /api/ai/generate`, streams are `start`,
`delta`..., `done` events). Every request body is
distinct (a run nonce and a sequence number) so no cache answers it.

`fire` sends one request and returns a `Sample`: status (or the exception's
name), total latency, first-chunk latency for streams, and whether the answer
completed. Scenarios (`at_once`, `paced`) are bounded in count and, through a
per-request timeout, in time; a request past its timeout is a sample with
status "timeout", never a hang.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

#: The model every request names; CACHED_MODEL is served by an upstream with a response cache
#: (bench.loadtest.procs.GatewayServer.prepare), the cached scenario's.
MODEL = "gpt-4o-mini"
CACHED_MODEL = "loadtest-cached"


@dataclass(frozen=True)
class Target:
    name: str
    base_url: str  # http://127.0.0.1:PORT, no trailing slash
    dialect: str  # "openai" | "anthropic" | "gateway"
    token: str = ""  # sent as Authorization: Bearer / Token, or x-api-key
    #: Serves CACHED_MODEL from a response cache (this project's /v1; the provider itself, the
    #: direct baseline, answers any model): the cached scenario runs against it.
    caches: bool = False

    def url(self) -> str:
        return self.base_url + {"gateway": "/api/ai/generate", "anthropic": "/v1/messages"}.get(
            self.dialect, "/v1/chat/completions")

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.token and self.dialect == "anthropic":
            headers.update({"x-api-key": self.token, "anthropic-version": "2023-06-01"})
        elif self.token:
            scheme = "Token" if self.dialect == "gateway" else "Bearer"
            headers["Authorization"] = f"{scheme} {self.token}"
        return headers

    def body(self, *, nonce: str, seq: int, stream: bool, model: str = MODEL) -> bytes:
        if self.dialect == "gateway":
            payload: dict[str, Any] = {
                "template_id": "meeting_minutes", "section_id": "1", "stream": stream,
                "data": {"meeting": {"title": f"Load run {nonce} request {seq}", "date": "2026-11-28",
                                     "host": "Load driver", "attendees": ["A", "B", f"P{seq}"]}},
            }
        elif self.dialect == "anthropic":
            payload = {"model": "gpt-4o-mini", "stream": stream, "max_tokens": 200,
                       "messages": [{"role": "user", "content": f"Load run {nonce} request {seq}"}]}
        else:
            payload = {"model": model, "stream": stream, "max_tokens": 200,
                       "messages": [{"role": "user", "content": f"Load run {nonce} request {seq}"}]}
            if stream:
                payload["stream_options"] = {"include_usage": True}
        return json.dumps(payload).encode()


@dataclass
class Sample:
    status: str  # "200", "502", "timeout", "ClientOSError", ...
    latency: float  # seconds from send to the last byte (or to the failure)
    first_chunk: float | None = None  # streams: seconds to the first content chunk
    completed: bool = False  # the answer arrived whole (JSON body, or the stream's final event)

    @property
    def ok(self) -> bool:
        return self.status == "200" and self.completed


@dataclass
class Driver:
    """Round-robin over `pools` sessions; use as `async with Driver() as driver`."""

    pools: int = 16
    sessions: list[aiohttp.ClientSession] = field(default_factory=list)

    async def __aenter__(self) -> Driver:
        for _ in range(self.pools):
            connector = aiohttp.TCPConnector(limit=0, force_close=False, enable_cleanup_closed=True)
            self.sessions.append(aiohttp.ClientSession(
                connector=connector, auto_decompress=True,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10)))
        self._next = itertools.cycle(self.sessions)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.gather(*(session.close() for session in self.sessions))
        self.sessions.clear()

    async def fire(self, target: Target, *, nonce: str, seq: int, stream: bool,
                   timeout: float, model: str = MODEL) -> Sample:
        session = next(self._next)
        body = target.body(nonce=nonce, seq=seq, stream=stream, model=model)
        start = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                return await _exchange(session, target, body, stream, start)
        except TimeoutError:
            return Sample("timeout", time.perf_counter() - start)
        except (aiohttp.ClientError, OSError) as err:
            return Sample(type(err).__name__, time.perf_counter() - start)


async def _exchange(session: aiohttp.ClientSession, target: Target, body: bytes, stream: bool,
                    start: float) -> Sample:
    headers = target.headers()
    if stream:
        headers["Accept"] = "text/event-stream"
    async with session.post(target.url(), data=body, headers=headers) as response:
        status = str(response.status)
        if response.status != 200 or not stream:
            payload = await response.read()
            completed = response.status == 200 and _whole_json(payload)
            return Sample(status, time.perf_counter() - start, completed=completed)
        first: float | None = None
        completed = False
        first_mark, done_mark = _STREAM_MARKS.get(target.dialect, _STREAM_MARKS["openai"])
        async for line in response.content:
            if first is None and line.startswith(first_mark[0]) and first_mark[1] in line:
                first = time.perf_counter() - start
            if line.startswith(done_mark):
                completed = True
            elif line.startswith(b"event: error"):
                status = "sse-error"
        return Sample(status, time.perf_counter() - start, first_chunk=first, completed=completed)


#: dialect -> ((line prefix, marker) of the first content line, prefix of the line that completes it).
_STREAM_MARKS = {"gateway": ((b"event: delta", b""), b"event: done"),
                 "openai": ((b"data: {", b'"content"'), b"data: [DONE]"),
                 "anthropic": ((b"data: {", b'"text_delta"'), b"event: message_stop")}


def _whole_json(payload: bytes) -> bool:
    try:
        json.loads(payload)
    except ValueError:
        return False
    return True


async def at_once(driver: Driver, target: Target, *, count: int, stream: bool, nonce: str,
                  timeout: float) -> tuple[list[Sample], float]:
    """`count` requests started together; returns the samples and the wall time."""
    start = time.perf_counter()
    samples = await asyncio.gather(*(
        driver.fire(target, nonce=nonce, seq=seq, stream=stream, timeout=timeout) for seq in range(count)))
    return list(samples), time.perf_counter() - start


async def paced(driver: Driver, target: Target, *, rate: float, duration: float, stream: bool,
                nonce: str, timeout: float) -> tuple[list[Sample], float]:
    """Open-loop arrivals: request i starts at i / rate seconds whatever happened to the
    earlier ones (a slow server does not slow the arrivals down), for `duration` seconds."""
    count = max(int(rate * duration), 1)
    start = time.perf_counter()
    tasks = []
    for seq in range(count):
        wait = start + seq / rate - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        tasks.append(asyncio.create_task(
            driver.fire(target, nonce=nonce, seq=seq, stream=stream, timeout=timeout)))
    samples = await asyncio.gather(*tasks)
    return list(samples), time.perf_counter() - start


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(int(-(-q * len(ordered) // 100)), 1)  # ceil(q/100 * n), at least 1
    return ordered[min(rank, len(ordered)) - 1]
