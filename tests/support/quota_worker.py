"""A worker process for admission tests: a real Django process with the real client, calling one
upstream from `threads` threads at one admission priority, sharing the quota state and the priority
queue with its siblings through Redis (environment: tests.support.worker's `worker_env`; the
upstream is set up by tests.support.pool_worker).

    python -m tests.support.quota_worker call <upstream> <priority> <threads> <calls> <pause>
    (then: ready / go <epoch>)

Each thread makes `calls` calls (`pause` seconds apart). Prints one JSON line: every call's
duration in seconds (the provider answers at once, so it is the wait for room), the outcomes by
code, and how long the whole batch took.
"""
from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


def _call(name: str, priority: str, threads: int, calls: int, pause: float) -> dict[str, Any]:
    from resilience import exceptions, upstream
    from resilience.client.context import priority_bound

    client = upstream(name)  # built (DB read) before the synchronised start
    print(json.dumps({"ready": True}), flush=True)
    start_at = float(sys.stdin.readline().split()[1])
    time.sleep(max(0.0, start_at - time.time()))
    waits: list[float] = []
    outcomes: dict[str, int] = {}
    lock = threading.Lock()

    def run() -> None:
        for _ in range(calls):
            began = time.monotonic()
            try:
                with priority_bound(priority):
                    answer = client.post("/v1/chat/completions", json=BODY, raise_for_status=False)
                outcome = str(answer.status_code)
            except exceptions.UpstreamError as err:
                outcome = err.code
            with lock:
                waits.append(time.monotonic() - began)
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
            time.sleep(pause)

    began = time.monotonic()
    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return {"waits": waits, "outcomes": outcomes, "took": time.monotonic() - began}


def main(argv: list[str]) -> None:
    import django

    django.setup()
    action, *args = argv
    if action != "call":
        raise SystemExit(f"unknown action {action!r}")
    result = _call(args[0], args[1], int(args[2]), int(args[3]), float(args[4]))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
