"""Middleware benchmark: our request-id and compression middleware against the
libraries that do the general part (django-guid, asgi-correlation-id,
django-compression-middleware, Django's GZipMiddleware), through Django's
ASGI handler as the server runs it (raw ASGI calls in one event loop, a
trivial view, nothing else in the stack), in interleaved rounds.

Also checks what a per-request number cannot show: whether a server-sent
event stream still arrives event by event once compressed (each event must
be decodable before the stream ends), and whether the request id is still
bound while a streamed body is produced (the streamed generation calls its
provider then, and its call log must carry the id).

    .venv/bin/python -m bench.bench_middleware [--requests N] [--rounds R]
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import zlib
from collections.abc import Callable
from typing import Any

from bench.common import django_setup, fmt_time, table

BIG = {"items": [{"id": i, "name": f"upstream-{i}", "state": "closed", "p95_ms": 123.4 + i}
                 for i in range(120)]}  # about 10 KB of JSON

# This module is the benchmark's ROOT_URLCONF (see bench_generate for the guard).
try:
    from django.http import JsonResponse, StreamingHttpResponse
    from django.urls import path

    from resilience.client.context import current_request_id

    seen_in_stream: list[dict[str, str | None]] = []


    def _ids_now() -> dict[str, str | None]:
        """The request id as each contender exposes it (each has its own context variable)."""
        from asgi_correlation_id.context import correlation_id
        from django_guid.context import guid

        return {"ours": current_request_id.get(), "django-guid": guid.get(),
                "asgi-correlation-id": correlation_id.get()}

    async def small(request):
        return JsonResponse({"ok": True})

    async def big(request):
        return JsonResponse(BIG)

    async def sse(request):
        async def events():
            for index in range(5):
                seen_in_stream.append(_ids_now())
                yield f"event: delta\ndata: {{\"n\": {index}}}\n\n".encode()
        return StreamingHttpResponse(events(), content_type="text/event-stream")

    urlpatterns = [path("small", small), path("big", big), path("sse", sse)]
except Exception:  # Django is not set up yet
    urlpatterns = []


def scope_for(path: str, headers: dict[str, str]) -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
            "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
            "headers": [(b"host", b"localhost"),
                        *((k.lower().encode(), v.encode()) for k, v in headers.items())],
            "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 50000)}


async def asgi_call(app: Any, path: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    done = asyncio.Event()
    received = [False]

    async def receive() -> dict[str, Any]:
        if not received[0]:
            received[0] = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            done.set()

    await app(scope_for(path, headers), receive, send)
    return sent


def handler(middleware: list[str]) -> Any:
    from django.core.handlers.asgi import ASGIHandler
    from django.test.utils import override_settings

    with override_settings(MIDDLEWARE=middleware):
        return ASGIHandler()


def timed(app: Any, path: str, headers: dict[str, str], n: int) -> Callable[[], float]:
    async def run() -> float:
        start = time.perf_counter()
        for _ in range(n):
            await asgi_call(app, path, headers)
        return (time.perf_counter() - start) / n

    return run


def isolated_django(middleware: list[str], n: int, *, body: Any = None,
                    headers: dict[str, str] | None = None) -> Callable[[], Any]:
    """Django middleware called directly around a view that answers at once
    (a new JsonResponse of `body` each time: compression rewrites it)."""
    from django.test import AsyncRequestFactory
    from django.utils.module_loading import import_string

    async def view(request: Any) -> Any:
        return JsonResponse(body if body is not None else {"ok": True})

    chain: Any = view
    for dotted in reversed(middleware):
        chain = import_string(dotted)(chain)
    request = AsyncRequestFactory().get("/small", headers=headers or {})

    async def run() -> float:
        start = time.perf_counter()
        for _ in range(n):
            await chain(request)
        return (time.perf_counter() - start) / n

    return run


def isolated_asgi(wrap: Callable[[Any], Any], n: int) -> Callable[[], Any]:
    """One ASGI middleware around an ASGI app that answers at once."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    wrapped = wrap(app)
    scope = scope_for("/small", {})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        return None

    async def run() -> float:
        start = time.perf_counter()
        for _ in range(n):
            await wrapped(dict(scope), receive, send)
        return (time.perf_counter() - start) / n

    return run


def interleaved(loop: asyncio.AbstractEventLoop, contenders: dict[str, Callable[[], Any]],
                rounds: int) -> dict[str, float]:
    for run in contenders.values():  # warm-up
        loop.run_until_complete(run())
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for index in range(rounds):
        order = list(contenders) if index % 2 else list(reversed(contenders))
        for name in order:
            samples[name].append(loop.run_until_complete(contenders[name]()))
    return {name: statistics.median(values) for name, values in samples.items()}


def decodable_before_end(messages: list[dict[str, Any]], coding: str) -> int:
    """Events a client can decode before the last body message arrives."""
    import brotli

    bodies = [m.get("body", b"") for m in messages if m["type"] == "http.response.body"]
    early = b"".join(bodies[:-1])
    if coding == "br":
        decoder = brotli.Decompressor()
        text = decoder.process(early) if early else b""
    elif coding == "gzip":
        text = zlib.decompressobj(31).decompress(early)
    else:
        text = early
    return text.count(b"event: delta")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="requests per round and contender")
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args(argv)
    django_setup()
    import importlib

    from django.conf import settings

    settings.ROOT_URLCONF = "bench.bench_middleware"
    views = importlib.import_module("bench.bench_middleware")  # the module Django routes to
    _guid_setup()
    loop = asyncio.new_event_loop()
    _request_id_table(loop, views, n=args.requests, rounds=args.rounds)
    _compression_table(loop, n=args.requests, rounds=args.rounds)
    loop.close()
    return 0


def _guid_setup() -> None:
    """django-guid refuses to start unless it is an installed app; its checks
    are a one-time set-up matter, not what is measured here. Our header name
    (its default is Correlation-ID)."""
    import django_guid.middleware
    from django_guid.config import settings as guid_settings

    django_guid.middleware.apps.is_installed = lambda name: True
    guid_settings.settings = {"GUID_HEADER_NAME": "X-Request-ID"}


def _request_id_table(loop: asyncio.AbstractEventLoop, views: Any, *, n: int, rounds: int) -> None:
    """Request id: ours vs django-guid vs asgi-correlation-id, through the handler and alone."""
    from asgi_correlation_id import CorrelationIdMiddleware

    from resilience.ops.middleware import SANE_REQUEST_ID

    bare = handler([])
    ours_id = handler(["resilience.ops.middleware.RequestIdMiddleware"])
    guid = handler(["django_guid.middleware.guid_middleware"])
    correlation = CorrelationIdMiddleware(bare, validator=SANE_REQUEST_ID.fullmatch)
    plain: dict[str, str] = {}  # each contender makes the id (django-guid accepts UUIDs only)
    ids = interleaved(loop, {
        "none (baseline)": timed(bare, "/small", plain, n),
        "ours": timed(ours_id, "/small", plain, n),
        "django-guid": timed(guid, "/small", plain, n),
        "asgi-correlation-id": timed(correlation, "/small", plain, n),
    }, rounds)

    # The middleware alone, around a view that answers at once: the handler's
    # own ~1 ms per request (above) hides differences of tens of µs in its noise.
    alone = interleaved(loop, {
        "django bare": isolated_django([], n * 10),
        "asgi bare": isolated_asgi(lambda app: app, n * 10),
        "ours": isolated_django(["resilience.ops.middleware.RequestIdMiddleware"], n * 10),
        "django-guid": isolated_django(["django_guid.middleware.guid_middleware"], n * 10),
        "asgi-correlation-id": isolated_asgi(
            lambda app: CorrelationIdMiddleware(app, validator=SANE_REQUEST_ID.fullmatch), n * 10),
    }, rounds)
    base = ids["none (baseline)"]
    # What each adds over the same view (Django) or app (ASGI) without it.
    added = {name: alone[name] - alone["asgi bare" if name == "asgi-correlation-id" else "django bare"]
             for name in ("ours", "django-guid", "asgi-correlation-id")}
    rows = []
    for name, app in (("ours", ours_id), ("django-guid", guid), ("asgi-correlation-id", correlation)):
        rows.append((name, fmt_time(ids[name]), f"{ids[name] / ids['ours']:.2f}", fmt_time(added[name]),
                     f"{added[name] / added['ours']:.2f}", _bound_in_stream(loop, views, name, app)))
    table("Request id: through Django's ASGI handler, and the middleware alone (median of interleaved "
          "rounds)",
          ("middleware", "per request (handler)", "ratio to ours", "middleware alone (added)",
           "ratio to ours",
           "id bound while a stream is produced"),
          [("none (baseline)", fmt_time(base), f"{base / ids['ours']:.2f}", "", "", ""), *rows])


def _bound_in_stream(loop: asyncio.AbstractEventLoop, views: Any, name: str, app: Any) -> str:
    """How many of a stream's events saw the echoed request id bound while they were produced."""
    views.seen_in_stream.clear()
    messages = loop.run_until_complete(asgi_call(app, "/sse", {}))
    start = next(m for m in messages if m["type"] == "http.response.start")
    echoed = {k.lower(): v for k, v in start["headers"]}.get(b"x-request-id", b"").decode()
    seen = views.seen_in_stream
    return f"{sum(1 for ids in seen if echoed and ids[name] == echoed)}/{len(seen)}"


def _compression_table(loop: asyncio.AbstractEventLoop, *, n: int, rounds: int) -> None:
    """Compression: ours vs django-compression-middleware (br) and Django's GZipMiddleware (gzip)."""
    ours_zip = handler(["resilience.ops.middleware.CompressionMiddleware"])
    library_br = handler(["compression_middleware.middleware.CompressionMiddleware"])
    django_gzip = handler(["django.middleware.gzip.GZipMiddleware"])
    rows = []
    for coding, library_name, library, library_path in (
            ("br", "django-compression-middleware", library_br,
             "compression_middleware.middleware.CompressionMiddleware"),
            ("gzip", "Django GZipMiddleware", django_gzip, "django.middleware.gzip.GZipMiddleware")):
        accept = {"Accept-Encoding": coding}
        times = interleaved(loop, {"ours": timed(ours_zip, "/big", accept, n),
                                   "library": timed(library, "/big", accept, n)}, rounds)
        alone = interleaved(loop, {
            "ours": isolated_django(["resilience.ops.middleware.CompressionMiddleware"], n, body=BIG,
                                    headers=accept),
            "library": isolated_django([library_path], n, body=BIG, headers=accept)}, rounds)
        size = {name: len(b"".join(m.get("body", b"") for m in loop.run_until_complete(
            asgi_call(app, "/big", accept)))) for name, app in (("ours", ours_zip), ("library", library))}
        events = {name: _sse_events(loop, app, coding)
                  for name, app in (("ours", ours_zip), ("library", library))}
        rows.append((f"{coding}: ours", fmt_time(times["ours"]), "1.00", fmt_time(alone["ours"]), "1.00",
                     f"{size['ours']} B", events["ours"]))
        rows.append((f"{coding}: {library_name}", fmt_time(times["library"]),
                     f"{times['library'] / times['ours']:.2f}", fmt_time(alone["library"]),
                     f"{alone['library'] / alone['ours']:.2f}", f"{size['library']} B", events["library"]))
    table("Compression of a 10 KB JSON body (per request through Django's ASGI handler), and a "
          "5-event SSE stream",
          ("middleware", "per request (handler)", "ratio to ours", "middleware alone", "ratio to ours",
           "body",
           "events decodable before the stream ends"),
          rows)


def _sse_events(loop: asyncio.AbstractEventLoop, app: Any, coding: str) -> str:
    """How many of the stream's 5 events a client can decode before it ends."""
    try:
        messages = loop.run_until_complete(asgi_call(app, "/sse", {"Accept-Encoding": coding}))
    except Exception as err:  # a contender that cannot stream at all
        return f"fails: {type(err).__name__}: {str(err)[:50]}"
    return f"{decodable_before_end(messages, coding)}/5"


if __name__ == "__main__":
    raise SystemExit(main())
