"""A worker process for endpoint-pool tests: a real Django process with the
real client, sharing a SQLite file (the policies) and Redis (breakers,
cooldowns, score window) with its siblings (environment: tests.support.worker's
`worker_env`).

    python -m tests.support.pool_worker setup '{"name": "pool", ..., "endpoints": [{...}]}'
    python -m tests.support.pool_worker call pool /path <seconds> <interval>   (then: ready / go <epoch>)

Each prints one JSON line with its result.
"""
from __future__ import annotations

import json
import sys
import time
from typing import Any


def _setup(spec: dict[str, Any]) -> dict[str, Any]:
    from django.core.management import call_command

    from resilience.models import Endpoint, Upstream

    call_command("migrate", verbosity=0)
    endpoints = spec.pop("endpoints")
    row = Upstream(**spec)
    row.full_clean()
    row.save()
    for fields in endpoints:
        Endpoint.objects.create(upstream=row, **fields)
    return {"saved": row.name}


def _call(name: str, path: str, seconds: float, interval: float) -> dict[str, Any]:
    """Calls for `seconds` after the `go` line, `interval` apart."""
    from resilience import exceptions, upstream

    client = upstream(name)  # built (DB read) before the synchronised start
    fallbacks = _cache_fallbacks()
    print(json.dumps({"ready": True}), flush=True)
    start_at = float(sys.stdin.readline().split()[1])
    time.sleep(max(0.0, start_at - time.time()))
    outcomes: dict[str, int] = {}
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        try:
            client.get(path)
            outcome = "ok"
        except exceptions.UpstreamError as err:
            outcome = err.code
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        time.sleep(interval)
    return {"outcomes": outcomes, "cache_fallbacks": fallbacks}


def _cache_fallbacks() -> list[str]:
    """The cache's warnings as this process falls back to local memory (filled as they come)."""
    import logging

    said: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            said.append(record.getMessage())

    logging.getLogger("resilience.cache").addHandler(Keep(logging.WARNING))
    return said


def main(argv: list[str]) -> None:
    import django

    django.setup()
    action, *args = argv
    if action == "setup":
        result = _setup(json.loads(args[0]))
    elif action == "call":
        result = _call(args[0], args[1], float(args[2]), float(args[3]))
    else:
        raise SystemExit(f"unknown action {action!r}")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
