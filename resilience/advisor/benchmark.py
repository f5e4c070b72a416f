"""The upstream benchmark: N calls through the resilient client, then the same
N to the same URL through a bare `requests.Session`, in the same run.

Each side runs `requests` calls on `concurrency` threads and reports
throughput, p50/p95/p99 latency (resilience.telemetry.histogram, as every
statistic here: within 1.75% of the exact nearest rank) and errors by kind
(the client's error code, or `http_<status>` / the exception's name for the
bare session). The report's `overhead` is client / bare for p50, p95 and
throughput. The client side bypasses the response cache (it would measure
the cache, not the upstream), and its calls are counted in the upstream's
statistics like any others.

`benchmark_job` runs the same as a job (resilience.jobs) with `requests` and
`concurrency` bounded by `BENCHMARK_MAX_REQUESTS` / `_CONCURRENCY`; its report
is the job's result, kept for `JOB_RETENTION_DAYS`.

Neither side follows redirects: a 3xx is the answer, counted alike on both
sides, and no call leaves the upstream's URL for wherever it points.

Failure behaviour: a call's error is counted under its kind, never raised;
an unknown upstream raises `UnknownUpstream` before anything is sent.
"""
from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import requests
from django.db import connections

from resilience import exceptions as errors
from resilience.advisor.conf import advisor_settings
from resilience.client import upstream_client
from resilience.client.urls import join_url
from resilience.jobs.models import Job
from resilience.jobs.registry import job
from resilience.jobs.runner import job_enqueue
from resilience.models import Upstream
from resilience.telemetry import histogram
from resilience.telemetry.calllog import call_log_flush

Call = Callable[[], str]  # one call; returns its kind: "ok" or an error kind


def _drive(call: Call, *, requests_: int, concurrency: int,
           progress: Callable[[], None] | None) -> dict[str, Any]:
    latencies: list[float] = []
    kinds: Counter[str] = Counter()
    lock = threading.Lock()

    def one(_: int) -> None:
        started = time.perf_counter()
        kind = call()
        elapsed = (time.perf_counter() - started) * 1000
        with lock:
            latencies.append(elapsed)
            kinds[kind] += 1
        if progress is not None:
            progress()

    remaining = iter(range(requests_))
    take = threading.Lock()

    def worker() -> None:
        try:
            while True:
                with take:
                    index = next(remaining, None)
                if index is None:
                    return
                one(index)
        finally:
            connections.close_all()  # this thread's own (a policy load may have opened one)

    threads = [threading.Thread(target=worker, name=f"bench-{i}") for i in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    p50, p95, p99 = histogram.percentiles(histogram.of(latencies), (0.50, 0.95, 0.99))
    errors_by_kind = {kind: count for kind, count in sorted(kinds.items()) if kind != "ok"}
    return {"requests": requests_, "ok": kinds.get("ok", 0), "errors": sum(errors_by_kind.values()),
            "errors_by_kind": errors_by_kind, "seconds": round(wall, 3),
            "throughput_rps": round(requests_ / wall, 1) if wall else None,
            "p50_ms": p50, "p95_ms": p95, "p99_ms": p99}


def benchmark_run(*, upstream: str, path: str = "/", requests: int = 100, concurrency: int = 4,
                  progress: Callable[[], None] | None = None) -> dict[str, Any]:
    """Benchmark upstream `upstream` (see the module docstring). `progress` is
    called after each call of both sides (2 x `requests` in all)."""
    if requests < 1 or concurrency < 1:
        raise errors.AppError("requests and concurrency must be at least 1")
    client = upstream_client(upstream)
    policy = client.policy
    url = join_url(policy.base_url, path, upstream=upstream)

    def through_client() -> str:
        try:
            client.get(path, cache=False)
        except errors.UpstreamError as err:
            return err.code
        return "ok"

    session = _bare_session(concurrency)
    timeout = (policy.connect_timeout, policy.read_timeout)

    def bare() -> str:
        try:
            # Never follows a redirect (as the client and the probe do not): a
            # redirect counts as the answer it is, and nothing goes to another host.
            response = session.get(url, timeout=timeout, allow_redirects=False)
            response.content  # noqa: B018  (read the body, as the client does)
        except Exception as err:  # counted by kind, as the client's errors are
            return type(err).__name__
        return "ok" if response.status_code < 400 else f"http_{response.status_code}"

    try:
        mine = _drive(through_client, requests_=requests, concurrency=concurrency, progress=progress)
        theirs = _drive(bare, requests_=requests, concurrency=concurrency, progress=progress)
    finally:
        session.close()
        call_log_flush()

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a and b else None

    return {"upstream": upstream, "path": path, "url": url.split("?", 1)[0], "requests": requests,
            "concurrency": concurrency, "client": mine, "bare": theirs,
            "overhead": {"p50": ratio(mine["p50_ms"], theirs["p50_ms"]),
                         "p95": ratio(mine["p95_ms"], theirs["p95_ms"]),
                         "throughput": ratio(mine["throughput_rps"], theirs["throughput_rps"])}}


def _bare_session(concurrency: int) -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=concurrency)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


@job(attempts=1, timeout=900)
def benchmark_job(*, upstream: str, path: str = "/", requests: int = 100,
                  concurrency: int = 4) -> dict[str, Any]:
    """The benchmark as a job (bounds checked again: a job row can be written by hand)."""
    requests = min(requests, int(advisor_settings.BENCHMARK_MAX_REQUESTS))
    concurrency = min(concurrency, int(advisor_settings.BENCHMARK_MAX_CONCURRENCY))
    return benchmark_run(upstream=upstream, path=path, requests=requests, concurrency=concurrency)


JOB_NAME = f"{benchmark_job.__module__}.{benchmark_job.__qualname__}"


class BenchmarkNotFound(errors.AppError):
    code = "benchmark_not_found"
    status = 404


def benchmark_enqueue(*, upstream: str, path: str, requests: int, concurrency: int, user: Any = None) -> Job:
    """Queue a benchmark of a known upstream (UnknownUpstream, 404, otherwise;
    InvalidUpstreamPath, 400, for a path that would leave its base URL)."""
    row = Upstream.objects.filter(name=upstream).first()
    if row is None:
        raise errors.UnknownUpstream(f"no upstream named {upstream!r}", upstream=upstream)
    join_url(row.base_url, path, upstream=upstream)
    return job_enqueue(JOB_NAME, args={"upstream": upstream, "path": path, "requests": requests,
                                       "concurrency": concurrency}, owner=user, group="benchmark")


def benchmark_job_get(*, job_id: str) -> Job:
    """A benchmark job by id (BenchmarkNotFound, 404, for anything else)."""
    try:
        key = uuid.UUID(str(job_id))
    except ValueError:
        raise BenchmarkNotFound(f"no benchmark job {job_id}") from None
    row = Job.objects.filter(pk=key, name=JOB_NAME).first()
    if row is None:
        raise BenchmarkNotFound(f"no benchmark job {job_id}")
    return row
