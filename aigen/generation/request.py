"""The one typed value a generation request travels as: `GenerationRequest`.

The edge parses a request body once (`GenerationRequest.from_body`) and hands
the value down: the async generate view, the jobs API, the job itself and
cache warm-up all build it the same way, so `POST /api/ai/generate` and
`POST /api/ai/jobs` refuse the same bodies with the same 400.

Lives in the generation core (not the edge) because tasks and warm-up, which
sit below the edge, read request bodies too.

On failure: `InvalidInput` naming the field (400); `section_check` raises the
registry's 404 kinds for an unknown template or section.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from aigen.exceptions import InvalidInput
from aigen.generation.registry import get_registry


@dataclass(frozen=True)
class GenerationRequest:
    """A generate request: template, section, the section's data and options."""

    template_id: str
    section_id: str
    data: dict[str, Any]
    use_cache: bool = True
    stream: bool = False

    @classmethod
    def from_body(cls, body: Any) -> GenerationRequest:
        """Parse a generate request body; raises `InvalidInput` naming the field."""
        return cls(**_fields(body))

    def section_check(self) -> dict[str, Any]:
        """The data cleaned against its section's fields, as the generation
        will clean it; `InvalidInput` naming the field, 404 kinds when the
        template or section is unknown. For callers that queue the request
        instead of running it now (jobs, warm-up)."""
        return get_registry().section(self.template_id, self.section_id).clean(self.data)

    def job_args(self) -> dict[str, Any]:
        """The keyword arguments `text_generate` (and the generate job) take."""
        return {"template_id": self.template_id, "section_id": self.section_id, "data": self.data,
                "use_cache": self.use_cache}


def _fields(body: Any) -> dict[str, Any]:
    """The generate request body's fields, validated (`GenerateRequestSerializer` documents it).

    Hand-written rather than a DRF serializer: building one costs about 0.3 ms,
    a third of a whole cache hit. Raises `InvalidInput` naming the field.
    """
    if not isinstance(body, dict):
        raise InvalidInput("", "Expected a JSON object.")
    args: dict[str, Any] = {}
    for name in ("template_id", "section_id"):
        value = body.get(name)
        if value is None:
            raise InvalidInput(name, "This field is required.")
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise InvalidInput(name, "Expected a string.")
        value = str(value).strip()
        if not value:
            raise InvalidInput(name, "This field may not be blank.")
        if len(value) > 64:
            raise InvalidInput(name, "At most 64 characters.")
        args[name] = value
    data = body.get("data")
    if data is None:
        raise InvalidInput("data", "This field is required.")
    if not isinstance(data, dict):
        raise InvalidInput("data", "Expected an object.")
    culprit = non_finite_path(data, "data")
    if culprit is not None:
        raise InvalidInput(culprit, "NaN and Infinity are not JSON numbers.")
    args["data"] = data
    for name, default in (("use_cache", True), ("stream", False)):
        value = body.get(name, default)
        if not isinstance(value, bool):
            raise InvalidInput(name, "Expected true or false.")
        args[name] = value
    return args


def non_finite_path(value: Any, path: str) -> str | None:
    """The path of the first NaN or +-Infinity in `value`, or None.

    Python's JSON parser accepts them, JSON does not: stored in a JSONField
    they failed the database's JSON check as a 500 (issue 23, L2). Walked
    with a stack of its own, so deep nesting costs no recursion.
    """
    stack = [(path, value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return where
        elif isinstance(item, dict):
            stack.extend((f"{where}.{key}", inner) for key, inner in reversed(item.items()))
        elif isinstance(item, list):
            stack.extend((f"{where}[{index}]", inner) for index, inner in reversed(list(enumerate(item))))
    return None
