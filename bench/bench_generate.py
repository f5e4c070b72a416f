"""Generate benchmark: `POST /api/ai/generate` answered from the cache against
a trivial authenticated DRF view, in the same process, through the same ASGI
stack the server runs (Django's AsyncClient in one event loop: middleware,
authentication, parsing, rendering; the generate view is async, the DRF view
runs in a thread as any sync view does under ASGI).

Both views get the same Bearer token and the same JSON body, so the difference
is the generation path on a hit: the per-user throttle, validation and the
canonical key, one cache read and a queued generation record.
Target: generate on a hit at least 0.7 of the trivial view's throughput.

    .venv/bin/python -m bench.bench_generate [--requests N] [--rounds R]
"""
from __future__ import annotations

import argparse
import json

from bench.common import django_setup, fmt_time, table, verdict

TARGET = 0.7
PING_PATH = "/bench/ping"

# This module is also the benchmark's ROOT_URLCONF. Django imports it by name
# once configured; run as __main__ it is imported before that, hence the guard.
try:
    from django.urls import include, path
    from rest_framework.response import Response
    from rest_framework.views import APIView

    class PingView(APIView):
        """The baseline: authenticated (project defaults), parses the body, answers."""

        def post(self, request):  # a DRF handler
            return Response({"success": True, "template_id": request.data.get("template_id")})

    urlpatterns = [path(PING_PATH.lstrip("/"), PingView.as_view()), path("", include("project.urls"))]
except Exception:  # ImproperlyConfigured: Django is not set up yet
    urlpatterns = []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="requests per round and contender")
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args(argv)

    # The mock provider (no key) and a throttle that counts but never refuses.
    django_setup(OPENAI_API_KEY="", AI_GENERATE_THROTTLE="1000000000/min",
                 ALLOWED_HOSTS="localhost,127.0.0.1,testserver")

    from asgiref.sync import async_to_sync
    from django.test import override_settings

    from aigen.generation.records import generation_records_flush

    body, headers = _request()
    with override_settings(ROOT_URLCONF="bench.bench_generate"):
        got = async_to_sync(_measure)(body, headers, rounds=args.rounds, requests=args.requests)
    generation_records_flush()

    ratio = got["trivial"] / got["generate"]  # throughput ratio = inverse time ratio
    table("AI generate on a cache hit vs a trivial authenticated DRF view "
          f"(ASGI, AsyncClient, median of {args.rounds} interleaved rounds of {args.requests})",
          ("view", "per request", "requests/s", "throughput ratio", "target"), [
              (f"trivial DRF view (POST {PING_PATH}, Bearer token)", fmt_time(got["trivial"]),
               f"{1 / got['trivial']:.0f}", "1.00 (baseline)", ""),
              ("POST /api/ai/generate, cache hit", fmt_time(got["generate"]), f"{1 / got['generate']:.0f}",
               f"{ratio:.2f}", f">= {TARGET}: {verdict(ratio >= TARGET)}"),
          ])
    return 0


def _request() -> tuple[bytes, dict[str, str]]:
    """The generate request's body (the template's sample data) and a bench user's token header."""
    from django.contrib.auth import get_user_model

    from aigen.edge.tokens import token_issue
    from aigen.generation.registry import get_registry
    from project import asgi_signals

    asgi_signals.install()  # as project/asgi.py does for the server
    user, _ = get_user_model().objects.get_or_create(username="bench")
    token = token_issue(user=user, replace=True)
    template = get_registry().template("emergency_plan")
    body = json.dumps({"template_id": template.id, "section_id": "2", "data": dict(template.sample_data)},
                      ensure_ascii=False).encode()
    return body, {"Authorization": f"Bearer {token}"}


async def _measure(body: bytes, headers: dict[str, str], *, rounds: int, requests: int) -> dict[str, float]:
    """Median time per request of each view, in interleaved rounds (after the cache is warm)."""
    import statistics
    import time

    from django.test import AsyncClient

    client = AsyncClient()

    async def post(path: str) -> object:
        response = await client.post(path, body, content_type="application/json", headers=headers)
        if response.status_code != 200:
            raise SystemExit(f"{path} answered {response.status_code}: {response.content[:300]!r}")
        return response

    first = (await post("/api/ai/generate")).json()
    assert first["cached"] is False
    assert (await post("/api/ai/generate")).json()["cached"] is True
    paths = {"trivial": PING_PATH, "generate": "/api/ai/generate"}
    for path in paths.values():  # warm-up
        for _ in range(100):
            await post(path)
    samples: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(rounds):
        for name, path in paths.items():
            started = time.perf_counter()
            for _ in range(requests):
                await post(path)
            samples[name].append((time.perf_counter() - started) / requests)
    return {name: statistics.median(values) for name, values in samples.items()}


if __name__ == "__main__":
    raise SystemExit(main())
