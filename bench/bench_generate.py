"""Generate benchmark: `POST /api/ai/generate` answered from the cache against
a trivial authenticated DRF view, in the same process, through the same WSGI
stack (Django's test client: middleware, authentication, parsing, rendering).

Both views get the same Bearer token and the same JSON body, so the difference
is the generation path on a hit: the per-user throttle, validation and the
canonical key, one cache read and a queued generation record.
Target: generate on a hit at least 0.7 of the trivial view's throughput.

    .venv/bin/python -m bench.bench_generate [--requests N] [--rounds R]
"""
from __future__ import annotations

import argparse
import json

from bench.common import compare, django_setup, fmt_time, table, verdict

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
    django_setup(OPENAI_API_KEY="", AI_GENERATE_THROTTLE="1000000000/min")

    from django.contrib.auth import get_user_model
    from django.test import Client, override_settings
    from rest_framework.authtoken.models import Token

    from aigen.records import generation_records_flush
    from aigen.registry import get_registry

    user, _ = get_user_model().objects.get_or_create(username="bench")
    token, _ = Token.objects.get_or_create(user=user)
    template = get_registry().template("emergency_plan")
    body = json.dumps({"template_id": template.id, "section_id": "2", "data": dict(template.sample_data)},
                      ensure_ascii=False).encode()
    client = Client(HTTP_AUTHORIZATION=f"Bearer {token.key}", HTTP_HOST="localhost")

    def post(path: str) -> object:
        response = client.post(path, body, content_type="application/json")
        if response.status_code != 200:
            raise SystemExit(f"{path} answered {response.status_code}: {response.content[:300]!r}")
        return response

    with override_settings(ROOT_URLCONF="bench.bench_generate"):
        first = post("/api/ai/generate").json()
        assert first["cached"] is False
        assert post("/api/ai/generate").json()["cached"] is True
        got = compare({
            "trivial": lambda: post(PING_PATH),
            "generate": lambda: post("/api/ai/generate"),
        }, n=args.requests, rounds=args.rounds, warmup=100)
    generation_records_flush()

    ratio = got["trivial"] / got["generate"]  # throughput ratio = inverse time ratio
    table("AI generate on a cache hit vs a trivial authenticated DRF view "
          f"(test client, median of {args.rounds} interleaved rounds of {args.requests})",
          ("view", "per request", "requests/s", "throughput ratio", "target"), [
              (f"trivial DRF view (POST {PING_PATH}, Bearer token)", fmt_time(got["trivial"]),
               f"{1 / got['trivial']:.0f}", "1.00 (baseline)", ""),
              ("POST /api/ai/generate, cache hit", fmt_time(got["generate"]), f"{1 / got['generate']:.0f}",
               f"{ratio:.2f}", f">= {TARGET}: {verdict(ratio >= TARGET)}"),
          ])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
