"""Resilient calls to upstream HTTP APIs: live policies, pooled sessions,
bounded retries, shared circuit breakers, response cache, single-flight and
call logs. Use `from resilience import upstream`; `upstream("name").get(path)`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from resilience.client import UpstreamClient


def upstream(name: str) -> UpstreamClient:
    """The process-wide client for upstream `name` (see resilience.client)."""
    # Imported on first use, not for a circle: `import resilience` happens while
    # Django loads its apps (INSTALLED_APPS), before the models the client reads exist.
    from resilience.client import upstream_client

    return upstream_client(name)
