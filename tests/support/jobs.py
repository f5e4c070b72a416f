"""Job functions for the jobs tests (registered when imported)."""
from __future__ import annotations

import os
import time
from pathlib import Path

from resilience.exceptions import AppError
from resilience.jobs import job


class Refused(AppError):
    code = "refused"
    status = 400


@job(attempts=1)
def add(*, a: int, b: int) -> int:
    return a + b


@job(attempts=3, backoff=0.001, jitter=0)
def flaky(*, counter: str, fail_times: int) -> str:
    """Fails its first `fail_times` runs (counted in the file `counter`)."""
    path = Path(counter)
    runs = int(path.read_text()) if path.exists() else 0
    path.write_text(str(runs + 1))
    if runs < fail_times:
        raise RuntimeError(f"flaky failure {runs + 1}")
    return f"ok after {runs + 1}"


@job(attempts=5, backoff=0.001, jitter=0)
def refuses() -> None:
    raise Refused("bad input never gets better")


@job(attempts=2, backoff=0.001, jitter=0, timeout=5)
def blocks(*, started: str, release: str) -> str:
    """Says it started (a file), then waits (bounded) for a release file."""
    Path(started).write_text(str(os.getpid()))
    for _ in range(2000):
        if Path(release).exists():
            return "released"
        time.sleep(0.01)
    return "gave up"


@job(attempts=1)
def upstream_said(*, name: str, path: str) -> str:
    """Calls upstream `name` and fails with what it answered, as a job that
    reports a provider's error text does."""
    from resilience import upstream

    response = upstream(name).get(path, raise_for_status=False)
    if response.status_code >= 400:
        raise RuntimeError(f"{name} said {response.status_code}: {response.text} ({response.url})")
    return response.text
