"""Fixtures for alert tests: a loopback webhook receiver (a real HTTP server
that records what it is sent), the alert settings pointed at it, and an
upstream on the fake provider."""
from __future__ import annotations

import hashlib
import hmac
from datetime import timedelta

import pytest

from resilience.alerts.models import AlertRule
from resilience.alerts.services import alert_rules_seed
from resilience.client import reset_clients
from resilience.models import Upstream
from tests.support.fake_upstream import FakeUpstream, Reply

SECRET = "test-alert-webhook-secret"


class Receiver(FakeUpstream):
    """A webhook receiver on 127.0.0.1: answers 200 to every POST and keeps them."""

    def posts(self, path: str = "/hook") -> list:
        return [r for r in self.requests if r.method == "POST" and r.path == path]

    @staticmethod
    def verified(request) -> bool:
        """The HMAC signature checks out for this body and timestamp."""
        signed = request.headers["X-Alert-Timestamp"].encode() + b"." + request.body
        expected = hmac.new(SECRET.encode(), signed, hashlib.sha256).hexdigest()
        return hmac.compare_digest(request.headers.get("X-Alert-Signature", ""), f"sha256={expected}")


@pytest.fixture
def receiver():
    with Receiver() as server:
        server.script("/hook", Reply(200, {"ok": True}), method="POST")
        server.script("/slack", Reply(200, "ok"), method="POST")
        yield server


@pytest.fixture
def alerting(settings, receiver):
    """Notifications to the receiver's /hook, signed; only `rules` enabled."""
    settings.RESILIENCE_ALERTS = {"WEBHOOK_URL": receiver.root_url + "/hook", "WEBHOOK_SECRET": SECRET}

    alert_rules_seed()  # a transactional test before this one flushed the migration's rows

    def only(*names: str) -> None:
        AlertRule.objects.exclude(name__in=names).update(enabled=False)

    return only


@pytest.fixture
def provider(db, fake):
    """An upstream `llm` on the fake provider: no retries, no breaker (the
    success-rate rules alone are under test), every call one attempt."""
    row = Upstream(name="llm", base_url=fake.url, retry_total=0, breaker_enabled=False,
                   connect_timeout=0.5, read_timeout=2, deadline=5)
    row.full_clean()
    row.save()
    reset_clients()
    return row


def later(moment, seconds: float):
    return moment + timedelta(seconds=seconds)
