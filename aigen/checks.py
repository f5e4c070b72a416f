"""System checks: the template registry must load, or the service refuses to start.

Each problem becomes one error naming the registry file and where in it:
`aigen.E001` unreadable file or invalid YAML, `aigen.E002` a schema problem,
`aigen.E003` a prompt template missing or not compiling, `aigen.E004` sample
data that does not fit a section.
"""
from __future__ import annotations

from typing import Any

from django.core import checks

from aigen.registry import RegistryError, display_path, registry_load


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
