"""A loopback OpenAI-compatible provider for load runs.

`POST /v1/chat/completions` (and `/chat/completions`) answers after a scripted
delay with an ordinary completion (usage included) or, with `"stream": true`,
with `chunks` SSE chunks spread evenly over the delay (`data: {...}`, a usage
chunk when `stream_options.include_usage`, then `data: [DONE]`). `GET
/v1/models` lists the one model. Every call is a coroutine sleeping on the
event loop, so one process holds thousands at once. A caller hanging up
cancels its call at once (aiohttp's handler cancellation), so "in flight"
counts the calls callers still hold, not ones waiting to notice a closed socket.

Control endpoints for the driver: `GET /_stats` (requests, streams, in flight
now, peak in flight), `POST /_reset` (zero the counters), `POST /_config`
(`{"delay": s, "chunks": n, "cut_every": k}`, applied to calls that start
afterwards). With `cut_every` k > 0, every k-th stream is cut half-way (the
connection closed without a final chunk or `[DONE]`: bench.bench_streams).
A request whose last message is the assistant's (a continuation's prefill)
is answered with the rest of the answer after it.

Standalone: `python -m bench.loadtest.provider --port 9100 --delay 1.0 --chunks 10`.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

MODEL = "gpt-4o-mini"


@dataclass
class ProviderConfig:
    """What every call does: answer after `delay` seconds; streams send
    `chunks` chunks, one every `delay / chunks` seconds."""

    delay: float = 1.0
    chunks: int = 10
    cut_every: int = 0


@dataclass
class ProviderStats:
    requests: int = 0
    streams: int = 0
    completed: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    started_at: float = field(default_factory=time.monotonic)

    def enter(self, *, stream: bool) -> None:
        self.requests += 1
        self.streams += stream
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def leave(self, *, completed: bool) -> None:
        self.in_flight -= 1
        self.completed += completed

    def reset(self) -> None:
        # In-flight calls keep counting down; the peak restarts from them.
        self.requests = self.streams = self.completed = 0
        self.peak_in_flight = self.in_flight
        self.started_at = time.monotonic()

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "streams": self.streams, "completed": self.completed,
                "in_flight": self.in_flight, "peak_in_flight": self.peak_in_flight}


CONFIG_KEY = web.AppKey("config", ProviderConfig)
STATS_KEY = web.AppKey("stats", ProviderStats)


def _words(body: dict[str, Any]) -> str:
    """Answer text that depends on the request, so distinct requests get
    distinct answers; after a prefill, the rest of that answer."""
    messages = body.get("messages") or [{}]
    prefill = messages[-1].get("content", "") if messages[-1].get("role") == "assistant" else None
    asked = [m for m in messages if m.get("role") != "assistant"] or [{}]
    answer = f"Loopback answer to: {str(asked[-1].get('content', ''))[-40:]}"
    if isinstance(prefill, str) and answer.startswith(prefill):
        return answer[len(prefill):]
    return answer


def _usage(prompt: str, answer: str) -> dict[str, int]:
    prompt_tokens, completion_tokens = max(len(prompt) // 4, 1), max(len(answer) // 4, 1)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


async def chat_completions(request: web.Request) -> web.StreamResponse:
    try:
        body = await request.json()
    except json.JSONDecodeError:
        return web.json_response({"error": {"message": "invalid JSON", "type": "invalid_request_error"}},
                                 status=400)
    config: ProviderConfig = request.app[CONFIG_KEY]
    stats: ProviderStats = request.app[STATS_KEY]
    delay, chunks = config.delay, max(config.chunks, 1)
    stream = bool(body.get("stream"))
    model = body.get("model") or MODEL
    answer = _words(body)
    prompt = json.dumps(body.get("messages", []), ensure_ascii=False)
    ident = f"chatcmpl-{stats.requests}"
    created = int(time.time())
    stats.enter(stream=stream)
    cut = stream and config.cut_every > 0 and stats.streams % config.cut_every == 0
    completed = False
    try:
        if not stream:
            await asyncio.sleep(delay)
            completed = True
            return web.json_response({
                "id": ident, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": answer}}],
                "usage": _usage(prompt, answer),
            })
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        pieces = _split(answer, chunks)
        base = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model}
        start = time.monotonic()
        for i, piece in enumerate(pieces):
            if cut and i == len(pieces) // 2:
                request.transport.close()  # half-way: the connection goes, no final chunk, no [DONE]
                return response
            # Sleep to the chunk's scheduled time, not a fixed step: no drift under load.
            wait = start + (i + 1) * delay / chunks - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            delta: dict[str, Any] = {"content": piece}
            if i == 0:
                delta["role"] = "assistant"
            last = i == len(pieces) - 1
            chunk = {**base, "choices": [{"index": 0, "delta": delta,
                                          "finish_reason": "stop" if last else None}]}
            await response.write(_sse(chunk))
        if (body.get("stream_options") or {}).get("include_usage"):
            await response.write(_sse({**base, "choices": [], "usage": _usage(prompt, answer)}))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        completed = True
        return response
    finally:
        stats.leave(completed=completed)


def _split(text: str, n: int) -> list[str]:
    """`n` non-empty pieces of `text` (padded when the text is shorter)."""
    text = text.ljust(n, ".")
    step, extra = divmod(len(text), n)
    pieces, at = [], 0
    for i in range(n):
        size = step + (i < extra)
        pieces.append(text[at:at + size])
        at += size
    return pieces


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


async def models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [
        {"id": MODEL, "object": "model", "created": 0, "owned_by": "loopback"}]})


async def stats_view(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATS_KEY].as_dict())


async def reset_view(request: web.Request) -> web.Response:
    request.app[STATS_KEY].reset()
    return web.json_response(request.app[STATS_KEY].as_dict())


async def config_view(request: web.Request) -> web.Response:
    config: ProviderConfig = request.app[CONFIG_KEY]
    body = await request.json()
    if "delay" in body:
        config.delay = max(float(body["delay"]), 0.0)
    if "chunks" in body:
        config.chunks = max(int(body["chunks"]), 1)
    if "cut_every" in body:
        config.cut_every = max(int(body["cut_every"]), 0)
    return web.json_response({"delay": config.delay, "chunks": config.chunks, "cut_every": config.cut_every})


def make_app(config: ProviderConfig | None = None) -> web.Application:
    app = web.Application(client_max_size=1024 * 1024)
    app[CONFIG_KEY] = config or ProviderConfig()
    app[STATS_KEY] = ProviderStats()
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/chat/completions", chat_completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/models", models)
    app.router.add_get("/_stats", stats_view)
    app.router.add_post("/_reset", reset_view)
    app.router.add_post("/_config", config_view)
    return app


async def provider_start(*, host: str = "127.0.0.1", port: int = 0,
                         config: ProviderConfig | None = None) -> tuple[web.AppRunner, int]:
    """Serve the provider on the running loop; returns the runner (`await runner.cleanup()`
    stops it) and the bound port."""
    runner = web.AppRunner(make_app(config), access_log=None, handle_signals=False,
                           handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096)
    await site.start()
    sockets = site._server.sockets  # aiohttp offers no public accessor for the bound port
    return runner, sockets[0].getsockname()[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.loadtest.provider", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--delay", type=float, default=1.0, help="seconds per call (default 1.0)")
    parser.add_argument("--chunks", type=int, default=10, help="chunks per stream (default 10)")
    args = parser.parse_args(argv)
    try:
        import uvloop  # optional: more calls per core
    except ImportError:
        uvloop = None
    app = make_app(ProviderConfig(delay=args.delay, chunks=args.chunks))
    web.run_app(app, host=args.host, port=args.port, access_log=None, backlog=4096, handler_cancellation=True,
                print=lambda *a: print(f"provider on http://{args.host}:{args.port}", flush=True),
                loop=uvloop.new_event_loop() if uvloop else None)


if __name__ == "__main__":
    main()
