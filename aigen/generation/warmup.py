"""Cache warmup: generate a list of requests ahead of users, in parallel.

`warmup_requests_load(path)` reads a JSON or YAML list of
`{"template_id", "section_id", "data"}`; `warmup_requests_for_template(id)`
builds one request per section from the template's sample data;
`cache_warmup(requests, ...)` runs them in this process and returns a
`WarmupSummary`; `warmup_enqueue(requests, ...)` queues them instead as
`aigen.generate` jobs of one batch (`WarmupBatch`), which any `jobs_worker`
runs; `warmup_batch_counts(batch)` is its progress (jobs by status) and
`warmup_batch_summary(batch)` its outcome once no job is left to run.

Warmup's upstream calls run at the `low` admission priority (queued jobs too: aigen.generation.tasks),
so on limited endpoints they take the room interactive callers leave.

On failure: a request that fails (bad data, provider error) is counted and
reported, never raised, so one bad entry does not stop the rest; an unreadable
file or an unknown template raises `WarmupError`. Queued, an entry whose
template, section or data shape is wrong is refused before it becomes a job
(counted failed); one that fails while running is a dead letter like any job
(a provider failure retried with backoff first) and is counted failed.
"""
from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from django.db import connections

from aigen.exceptions import GenerationError
from aigen.generation.records import generation_records_flush
from aigen.generation.registry import get_registry
from aigen.generation.services import text_generate
from aigen.generation.tasks import GENERATE_JOB, generation_job_args
from resilience.client.context import priority_bound
from resilience.exceptions import AppError
from resilience.jobs import job_enqueue
from resilience.jobs.models import Job
from resilience.jobs.selectors import job_counts


class WarmupError(Exception):
    pass


@dataclass(frozen=True)
class WarmupItem:
    index: int
    template_id: str
    section_id: str
    data: Any

    @property
    def label(self) -> str:
        return f"{self.template_id}/{self.section_id}"


@dataclass(frozen=True)
class WarmupOutcome:
    item: WarmupItem
    status: str  # "generated", "cached" or "failed"
    latency_ms: int = 0
    error: str = ""


@dataclass
class WarmupSummary:
    outcomes: list[WarmupOutcome] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def generated(self) -> int:
        return self.count("generated")

    @property
    def cached(self) -> int:
        return self.count("cached")

    @property
    def failed(self) -> int:
        return self.count("failed")


def warmup_requests_load(path: str | Path) -> list[WarmupItem | WarmupOutcome]:
    """Requests from a JSON or YAML list; malformed entries come back as failed outcomes."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise WarmupError(f"cannot read {path}: {err.strerror or err}") from err
    try:
        document = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as err:
        raise WarmupError(f"{path} is not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}: "
                          f"{err}") from err
    if isinstance(document, dict) and isinstance(document.get("requests"), list):
        document = document["requests"]
    if not isinstance(document, list):
        raise WarmupError(f"{path}: expected a list of {{template_id, section_id, data}}")
    items: list[WarmupItem | WarmupOutcome] = []
    for index, entry in enumerate(document):
        keys = ("template_id", "section_id", "data")
        missing = [k for k in keys if not isinstance(entry, dict) or k not in entry]
        if missing:
            bad = WarmupItem(index, str(entry.get("template_id", "?")) if isinstance(entry, dict) else "?",
                             str(entry.get("section_id", "?")) if isinstance(entry, dict) else "?", None)
            items.append(WarmupOutcome(bad, "failed", error=f"entry {index}: missing {', '.join(missing)}"))
            continue
        items.append(WarmupItem(index, str(entry["template_id"]), str(entry["section_id"]), entry["data"]))
    return items


def warmup_requests_for_template(template_id: str) -> list[WarmupItem]:
    """One request per section of `template_id`, with its sample data."""
    try:
        template = get_registry().template(template_id)
    except GenerationError as err:
        raise WarmupError(err.message) from err
    return [WarmupItem(i, template.id, section_id, dict(template.sample_data))
            for i, section_id in enumerate(template.sections)]


def _run_one(item: WarmupItem, force: bool, in_worker: bool) -> WarmupOutcome:
    try:
        with priority_bound("low"):  # batch work: interactive callers get freed room first
            result = text_generate(template_id=item.template_id, section_id=item.section_id, data=item.data,
                                   use_cache=not force)
    except GenerationError as err:
        return WarmupOutcome(item, "failed", error=f"{err.code}: {err.message}")
    except Exception as err:  # report and go on with the others
        return WarmupOutcome(item, "failed", error=f"{type(err).__name__}: {err}")
    finally:
        if in_worker:
            connections.close_all()
    return WarmupOutcome(item, "cached" if result.cached else "generated", latency_ms=result.latency_ms)


def cache_warmup(items: Sequence[WarmupItem | WarmupOutcome], *, concurrency: int = 4, force: bool = False,
                 progress: Callable[[int, int, WarmupOutcome], None] | None = None) -> WarmupSummary:
    """Generate every item not yet cached (all of them with `force`), `concurrency` at a time.

    `progress(done, total, outcome)` is called after each item, on the calling thread.
    """
    summary = WarmupSummary()
    total = len(items)

    def report(outcome: WarmupOutcome) -> None:
        summary.outcomes.append(outcome)
        if progress is not None:
            progress(len(summary.outcomes), total, outcome)

    todo = []
    for entry in items:
        if isinstance(entry, WarmupOutcome):
            report(entry)
        else:
            todo.append(entry)
    try:
        if concurrency <= 1:
            for item in todo:
                report(_run_one(item, force, in_worker=False))
        else:
            with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="warmup") as pool:
                for outcome in pool.map(lambda item: _run_one(item, force, in_worker=True), todo):
                    report(outcome)
    finally:
        generation_records_flush()
    return summary


@dataclass(frozen=True)
class WarmupBatch:
    """A warmup queued as jobs: `group` tags its jobs (admin: Jobs, search
    it); `queued` jobs were created; `refused` entries never became jobs."""

    group: str
    queued: int
    refused: tuple[WarmupOutcome, ...] = ()

    @property
    def total(self) -> int:
        return self.queued + len(self.refused)


def warmup_enqueue(items: Sequence[WarmupItem | WarmupOutcome], *, force: bool = False,
                   priority: str = Job.Priority.LOW) -> WarmupBatch:
    """Queue one `aigen.generate` job per item (low priority by default, so
    users' own jobs go first), tagged with a new batch id."""
    group = f"warmup-{uuid.uuid4().hex[:12]}"
    refused: list[WarmupOutcome] = []
    queued = 0
    for entry in items:
        if isinstance(entry, WarmupOutcome):
            refused.append(entry)
            continue
        body = {"template_id": entry.template_id, "section_id": entry.section_id, "data": entry.data,
                "use_cache": not force}
        try:
            args, _ = generation_job_args(body)
        except AppError as err:
            refused.append(WarmupOutcome(entry, "failed", error=f"{err.code}: {err.message}"))
            continue
        job_enqueue(GENERATE_JOB, args=args, priority=priority, group=group)
        queued += 1
    return WarmupBatch(group=group, queued=queued, refused=tuple(refused))


def warmup_batch_counts(batch: WarmupBatch) -> dict[str, int]:
    """The batch's jobs by status: queued, running, done, failed (refused
    entries are not jobs and not counted here)."""
    return job_counts(group=batch.group)


def warmup_batch_summary(batch: WarmupBatch) -> WarmupSummary:
    """What the batch did: refused entries and failed jobs as failed, done
    jobs as generated or already cached (from the result generate answered).
    Jobs still queued or running are left out."""
    summary = WarmupSummary(outcomes=list(batch.refused))
    rows = Job.objects.filter(group=batch.group, status__in=[Job.Status.DONE, Job.Status.FAILED])
    for index, row in enumerate(rows.order_by("created_at"), start=len(batch.refused)):
        item = WarmupItem(index, str(row.args.get("template_id", "?")), str(row.args.get("section_id", "?")),
                          row.args.get("data"))
        if row.status == Job.Status.FAILED:
            error = row.error or {}
            summary.outcomes.append(WarmupOutcome(item, "failed", error=f"{error.get('code', 'job_error')}: "
                                                                        f"{error.get('message', '')}"))
            continue
        result = row.result or {}
        summary.outcomes.append(WarmupOutcome(item, "cached" if result.get("cached") else "generated",
                                              latency_ms=int(result.get("latency_ms") or 0)))
    return summary
