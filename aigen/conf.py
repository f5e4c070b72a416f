"""The aigen app's settings: `settings.AIGEN` over `DEFAULTS`.

Read through `aigen_settings.NAME` at use time (never copied into module
constants), reloaded on Django's `setting_changed` so `override_settings` works.
Whoever caches something built from these settings (the registry, the
provider) connects to `setting_changed` as well.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resilience.client.urls import display_url
from resilience.conf import AppSettings

DEFAULTS: dict[str, Any] = {
    # No key: the mock provider serves (deterministic, marked as mock content).
    "OPENAI_API_KEY": "",
    # Seeds the `openai` upstream's base URL ("" = OpenAI's own). Once the
    # upstream exists its stored policy (admin, with history) is what the
    # provider calls: a later change of this variable is reported, not applied
    # (`base_url_disagreement`; `manage.py seed_upstreams --sync-openai-url`).
    "OPENAI_BASE_URL": "",
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
    # Generation records (one per request, cache hits included) older than
    # this many days are deleted by `manage.py prune_telemetry` and the
    # scheduled prune job. Metrics do not read them (aigen.generation.metrics).
    "GENERATION_RETENTION_DAYS": 30,
    # API tokens (aigen.edge.tokens): each process re-reads the shared token
    # generation at most this often (seconds), so a revoked token stops
    # working in every worker within about this long.
    "TOKEN_CHECK_INTERVAL": 0.5,
    # The doors' per-user throttle (aigen.edge.throttling): far from the limit a
    # worker counts up to this many requests in one round trip (0 or 1: each alone).
    "THROTTLE_LEASE": 16,
    # /v1/messages streams (aigen.edge.messages): a `ping` event after this
    # many seconds without one, as Anthropic's API sends, so idle proxies and
    # clients keep a slow answer's connection.
    "MESSAGES_PING_INTERVAL": 10.0,
    # Caller limits (aigen.generation.quotas): a call reserves its prompt
    # estimate plus its max_tokens, or this many when it names none.
    "QUOTA_DEFAULT_MAX_TOKENS": 1024,
    # A reservation whose worker never settled it (killed mid-call) is
    # released after this many seconds.
    "QUOTA_RESERVATION_SECONDS": 300,
    # Usage ledger (aigen.generation.ledger): usage is summed in process and
    # upserted at least this often (seconds) or once this many calls wait;
    # rows older than USAGE_RETENTION_DAYS go with `prune_telemetry`.
    "USAGE_FLUSH_INTERVAL": 1.0,
    "USAGE_BUFFER_MAX": 500,
    "USAGE_RETENTION_DAYS": 400,
}


DEFAULT_OPENAI_BASE_URL = "https://api.openai.com/v1"


def default_registry_file() -> Path:
    return Path(__file__).resolve().parent / "templates.yaml"


class AigenSettings(AppSettings):
    @property
    def registry_file(self) -> Path:
        return Path(self.REGISTRY_FILE) if self.REGISTRY_FILE else default_registry_file()


aigen_settings = AigenSettings("AIGEN", DEFAULTS)


def openai_base_url() -> str:
    """The base URL the `openai` upstream is seeded with: OPENAI_BASE_URL, or OpenAI's."""
    return aigen_settings.OPENAI_BASE_URL or DEFAULT_OPENAI_BASE_URL


@dataclass(frozen=True)
class BaseUrlDisagreement:
    """OPENAI_BASE_URL names one provider, the stored upstream policy another
    (the stored one is called)."""

    upstream: str
    environment: str
    stored: str

    @property
    def message(self) -> str:
        return (f"OPENAI_BASE_URL is {display_url(self.environment)} but the stored {self.upstream!r} "
                f"upstream calls {display_url(self.stored)}: the stored policy wins. Edit the upstream "
                f"in the admin, or run `manage.py seed_upstreams --sync-openai-url` to store the "
                f"variable's URL.")


def base_url_disagreement() -> BaseUrlDisagreement | None:
    """The disagreement between an explicitly set OPENAI_BASE_URL and the stored
    upstream's base URL, or None (no variable set, no upstream yet, or they agree).
    One indexed query; for the admin banner and the server's start."""
    environment = aigen_settings.OPENAI_BASE_URL
    if not environment:
        return None
    from resilience.models import Upstream

    stored = (Upstream.objects.filter(name=aigen_settings.UPSTREAM)
              .values_list("base_url", flat=True).first())
    if stored is None or stored.rstrip("/") == environment.rstrip("/"):
        return None
    return BaseUrlDisagreement(upstream=aigen_settings.UPSTREAM, environment=environment, stored=stored)
