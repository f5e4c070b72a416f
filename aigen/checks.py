"""System checks: the template registry must load, or the service refuses to start.

Each problem becomes one error naming the registry file and where in it:
`aigen.E001` unreadable file or invalid YAML, `aigen.E002` a schema problem,
`aigen.E003` a prompt template missing or not compiling, `aigen.E004` sample
data that does not fit a section.
"""
from __future__ import annotations

from typing import Any

from django.core import checks

from aigen.generation.registry import RegistryError, display_path, registry_load


@checks.register("aigen")
def check_registry(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    try:
        registry_load()
    except RegistryError as err:
        where = display_path(err.path)
        return [
            checks.Error(f"Template registry {where}: {problem}",
                         hint="Fix the registry file or the prompt templates it names.",
                         id=f"aigen.{problem.code}")
            for problem in err.problems
        ]
    return []


@checks.register("aigen")
def check_openai_base_url(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """`aigen.E005`: OPENAI_BASE_URL (which seeds the `openai` upstream) must be
    a base URL the upstream policy accepts, or `migrate` could not seed it."""
    from django.core.exceptions import ValidationError

    from aigen.conf import aigen_settings, openai_base_url
    from resilience.client.urls import display_url
    from resilience.models import Upstream

    if not aigen_settings.OPENAI_BASE_URL:
        return []
    try:
        Upstream(name=aigen_settings.UPSTREAM, base_url=openai_base_url()).clean()
    except ValidationError as err:
        problem = "; ".join(err.message_dict.get("base_url", err.messages))
        # The URL as shown has no user, password or query values: they are what may hold a key.
        return [checks.Error(f"OPENAI_BASE_URL {display_url(openai_base_url())!r}: {problem}",
                             hint="Set OPENAI_BASE_URL to the provider's base URL, "
                                  "e.g. https://api.openai.com/v1.",
                             id="aigen.E005")]
    return []
