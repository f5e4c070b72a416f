"""The aigen app's settings: `settings.AIGEN` over `DEFAULTS`.

Read through `aigen_settings.NAME` at use time (never copied into module
constants), reloaded on Django's `setting_changed` so `override_settings` works.
Whoever caches something built from these settings (the registry, the
provider) connects to `setting_changed` as well.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from resilience.conf import AppSettings

DEFAULTS: dict[str, Any] = {
    # No key: the mock provider serves (deterministic, marked as mock content).
    "OPENAI_API_KEY": "",
    # Seeds the `openai` upstream's base URL; the upstream policy (admin) is
    # what the provider actually calls.
    "OPENAI_BASE_URL": "https://api.openai.com/v1",
    "MODEL": "gpt-4o-mini",
    # The resilience upstream the OpenAI provider sends through.
    "UPSTREAM": "openai",
    # The template registry (YAML); None for aigen/templates.yaml.
    "REGISTRY_FILE": None,
    # Cache TTL (seconds) for sections whose registry entry names none.
    "CACHE_TTL": 24 * 3600,
    # Longest a request waits for an identical one already generating, and the
    # expiry of the cross-process single-flight lock (seconds).
    "SINGLE_FLIGHT_TIMEOUT": 120.0,
    # Generation records are written off the request path in bulk, at least
    # this often (seconds) or as soon as this many are waiting.
    "RECORD_FLUSH_INTERVAL": 1.0,
    "RECORD_BUFFER_MAX": 200,
}


def default_registry_file() -> Path:
    return Path(__file__).resolve().parent / "templates.yaml"


class AigenSettings(AppSettings):
    @property
    def registry_file(self) -> Path:
        return Path(self.REGISTRY_FILE) if self.REGISTRY_FILE else default_registry_file()


aigen_settings = AigenSettings("AIGEN", DEFAULTS)
