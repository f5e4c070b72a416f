"""AI text generation from templates, through the resilient upstream client.

`from aigen import generate`; `generate("emergency_plan", "2", data)` returns a
`GenerationResult` (see aigen.generation.services.text_generate) or raises a
`GenerationError` kind (see aigen.exceptions).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aigen.generation.services import GenerationResult


def generate(template_id: str, section_id: str, data: Any, *, use_cache: bool = True,
             user: Any = None) -> GenerationResult:
    """Generate (or fetch from the cache) one section's text: `aigen.generation.services.text_generate`."""
    from aigen.generation.services import text_generate

    return text_generate(template_id=template_id, section_id=section_id, data=data, use_cache=use_cache,
                         user=user)
