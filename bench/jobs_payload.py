"""Work for bench_jobs (imported once Django is set up): a job that does
nothing, through the ledger (`bench.jobs_payload.noop`), and the same nothing
as a bare engine task (`bare_noop`), the engine's own cost."""
from __future__ import annotations

from django_tasks import task

from resilience.jobs import job


@job(name="bench.jobs_payload.noop", attempts=1)
def noop(*, n: int) -> int:
    return n


@task()
def bare_noop(n: int) -> int:
    return n
