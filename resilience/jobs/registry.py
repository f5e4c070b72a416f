"""Job declarations: `@job(attempts=..., backoff=..., timeout=...)` on a
module-level function registers it under its dotted path.

A job function takes keyword arguments that are JSON values and returns a
JSON value (stored as the job's result).
"""
from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from typing import Any

from resilience.exceptions import AppError

_registry: dict[str, JobSpec] = {}


def retry_server_errors(err: BaseException) -> bool:
    """The default retry rule: an `AppError` below 500 (bad input, unknown
    template) never gets better by trying again; anything else may."""
    return not (isinstance(err, AppError) and err.status < 500)


@dataclass(frozen=True)
class JobSpec:
    """How a job runs.

    - `attempts`: tries in all (1 = no retry); after the last one the job is a
      dead letter.
    - `backoff`, `backoff_max`, `jitter`: the wait before retry n is
      `min(backoff * 2^(n-1), backoff_max) + uniform(0, jitter)` seconds.
    - `timeout`: the lease of one attempt (seconds): a running attempt not
      finished by then plus `JOB_LEASE_GRACE` is taken as lost (its worker
      died) and retried by `jobs_reap`. On RQ it is also the job timeout.
    - `retry_if(err)`: whether a failure may be retried.
    """

    name: str
    func: Callable[..., Any]
    attempts: int = 3
    backoff: float = 2.0
    backoff_max: float = 300.0
    jitter: float = 1.0
    timeout: float = 600.0
    retry_if: Callable[[BaseException], bool] = retry_server_errors

    rng = random.random  # seam: tests fix the jitter

    def delay(self, attempt: int) -> float:
        """Seconds to wait before the attempt after `attempt` (1-based)."""
        return min(self.backoff * 2 ** (attempt - 1), self.backoff_max) + self.jitter * JobSpec.rng()


def job(*, name: str | None = None, **options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a job function; `options` are `JobSpec` fields."""

    def register(func: Callable[..., Any]) -> Callable[..., Any]:
        spec = JobSpec(name=name or f"{func.__module__}.{func.__qualname__}", func=func, **options)
        _registry[spec.name] = spec
        return func

    return register


def job_spec(name: str) -> JobSpec:
    """The spec registered as `name`, importing its module on first use (a
    worker process has not necessarily imported it yet). KeyError if none."""
    if name not in _registry:
        module = name.rsplit(".", 1)[0]
        try:
            import_module(module)
        except ImportError:
            pass
    return _registry[name]
