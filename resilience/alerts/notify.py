"""Notifiers: where an alert group goes. Each receiver configured in
`RESILIENCE_ALERTS` gets one message per group (a rule's alerts that changed
in one evaluation):

- `WEBHOOK_URL`: a generic JSON body (`group_payload`), POSTed with
  `X-Alert-Timestamp: <unix seconds>` and, with `WEBHOOK_SECRET` set,
  `X-Alert-Signature: sha256=<hex>`: HMAC-SHA256 over `"<timestamp>." + body`
  (the receiver recomputes it and refuses stale timestamps: no replay);
- `SLACK_WEBHOOK_URL`: Slack's incoming-webhook shape (`text` and a
  coloured attachment per alert);
- `EMAIL_TO`: one mail through Django's mail settings (`EMAIL_*`).

On failure: a receiver that refuses, times out or answers >= 300 is logged
(its kind and why, never its URL: a Slack URL is a secret) and reported
False; the others are still tried. No redirect is followed.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from typing import Any

import requests
from django.core.mail import send_mail

from resilience.alerts.conf import alerts_settings

logger = logging.getLogger(__name__)

SLACK_COLOURS = {"critical": "#c62828", "warning": "#ef6c00", "info": "#1565c0", "resolved": "#2e7d32"}


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The `X-Alert-Signature` value of `body` sent at `timestamp`."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def group_payload(rule: Any, alerts: list[dict[str, Any]]) -> dict[str, Any]:
    """The generic JSON body: the rule and its alerts that changed."""
    status = "firing" if any(a["state"] == "firing" for a in alerts) else "resolved"
    return {
        "version": 1, "group": rule.name, "status": status,
        "rule": {"name": rule.name, "description": rule.description, "metric": rule.metric,
                 "scope": rule.scope, "target": rule.target, "op": rule.op, "threshold": rule.threshold,
                 "for_seconds": rule.for_seconds, "window": rule.window, "severity": rule.severity},
        "alerts": alerts,
    }


def _summary(payload: dict[str, Any]) -> str:
    rule = payload["rule"]
    lines = [f"[{payload['status'].upper()}] {rule['name']} ({rule['severity']}): "
             f"{rule['metric']} {rule['op']} {rule['threshold']:g}"]
    for alert in payload["alerts"]:
        value = "no data" if alert["value"] is None else f"{alert['value']:g}"
        lines.append(f"- {alert['subject']}: {alert['transition']} (value {value})")
    return "\n".join(lines)


def _post(kind: str, url: str, body: bytes, headers: dict[str, str]) -> bool:
    try:
        response = requests.post(url, data=body, headers={"Content-Type": "application/json", **headers},
                                 timeout=alerts_settings.NOTIFY_TIMEOUT, allow_redirects=False)
    except requests.RequestException as err:
        logger.warning("alert notification to %s failed: %s", kind, type(err).__name__)
        return False
    if response.status_code >= 300:
        logger.warning("alert notification to %s refused: HTTP %s", kind, response.status_code)
        return False
    return True


def webhook_send(payload: dict[str, Any]) -> bool:
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    timestamp = str(int(time.time()))
    headers = {"X-Alert-Timestamp": timestamp}
    if alerts_settings.WEBHOOK_SECRET:
        headers["X-Alert-Signature"] = signature(alerts_settings.WEBHOOK_SECRET, timestamp, body)
    return _post("webhook", alerts_settings.WEBHOOK_URL, body, headers)


def slack_send(payload: dict[str, Any]) -> bool:
    severity = payload["rule"]["severity"]
    attachments = [{"color": SLACK_COLOURS["resolved" if a["state"] == "resolved" else severity],
                    "text": f"{a['subject']}: {a['transition']}, value "
                            f"{'no data' if a['value'] is None else format(a['value'], 'g')}"}
                   for a in payload["alerts"]]
    body = json.dumps({"text": _summary(payload).splitlines()[0], "attachments": attachments}).encode()
    return _post("slack", alerts_settings.SLACK_WEBHOOK_URL, body, {})


def email_send(payload: dict[str, Any]) -> bool:
    first = _summary(payload).splitlines()[0]
    try:
        send_mail(subject=first, message=_summary(payload), from_email=None,
                  recipient_list=list(alerts_settings.EMAIL_TO))
    except Exception as err:  # SMTP refusals, DNS, TLS: any mail failure is only this receiver's
        logger.warning("alert notification by email failed: %s", type(err).__name__)
        return False
    return True


def receivers() -> list[tuple[str, Any]]:
    """The configured receivers, as (kind, send function)."""
    found = []
    if alerts_settings.WEBHOOK_URL:
        found.append(("webhook", webhook_send))
    if alerts_settings.SLACK_WEBHOOK_URL:
        found.append(("slack", slack_send))
    if alerts_settings.EMAIL_TO:
        found.append(("email", email_send))
    return found


def group_notify(payload: dict[str, Any]) -> bool | None:
    """Send one group to every receiver: True if all took it, False if one
    failed, None when none is configured."""
    sent = [send(payload) for _, send in receivers()]
    if not sent:
        return None
    return all(sent)
