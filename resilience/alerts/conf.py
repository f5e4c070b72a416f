"""The alerts' settings: `settings.RESILIENCE_ALERTS` over `DEFAULTS`, read at
use time (resilience.conf.AppSettings); project/settings.py fills them from
the environment."""
from __future__ import annotations

from typing import Any

from resilience.conf import AppSettings

DEFAULTS: dict[str, Any] = {
    # Seconds between evaluations of every rule (one run per interval across
    # the cluster, on the jobs scheduler).
    "EVALUATE_INTERVAL": 15,
    # A generic JSON webhook (POST), signed with HMAC-SHA256 over the body
    # when the secret is set: header X-Alert-Signature: sha256=<hex>.
    "WEBHOOK_URL": "",
    "WEBHOOK_SECRET": "",
    # A Slack incoming webhook URL (the URL is the secret: never logged).
    "SLACK_WEBHOOK_URL": "",
    # Recipients of alert mail, through Django's mail settings (EMAIL_*).
    "EMAIL_TO": [],
    # Seconds a notifier's HTTP request may take.
    "NOTIFY_TIMEOUT": 5.0,
    # Alert history (transitions), resolved alerts and ended silences are
    # deleted this many days later.
    "RETENTION_DAYS": 30,
}

alerts_settings = AppSettings("RESILIENCE_ALERTS", DEFAULTS)
