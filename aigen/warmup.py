"""Cache warmup: generate a list of requests ahead of users, in parallel.

`warmup_requests_load(path)` reads a JSON or YAML list of
`{"template_id", "section_id", "data"}`; `warmup_requests_for_template(id)`
builds one request per section from the template's sample data;
`cache_warmup(requests, ...)` runs them and returns a `WarmupSummary`.

On failure: a request that fails (bad data, provider error) is counted and
reported, never raised, so one bad entry does not stop the rest; an unreadable
file or an unknown template raises `WarmupError`.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from django.db import connections

from aigen.exceptions import GenerationError
from aigen.records import generation_records_flush
from aigen.registry import get_registry
from aigen.services import text_generate


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
