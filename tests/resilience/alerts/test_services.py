"""Alerts end to end in one process: a provider that starts failing, the
calls counted in the rollups by the real client and writer, the evaluator
moving the clock, the notification as a loopback webhook receives it."""
from __future__ import annotations

import sqlite3
from contextlib import closing
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.core import mail
from django.utils import timezone

from resilience import exceptions, upstream
from resilience.alerts.models import Alert, AlertEvent, AlertRule
from resilience.alerts.services import (
    alert_rules_seed,
    alerts_evaluate,
    alerts_prune,
    silence_create,
    silence_end,
)
from resilience.telemetry.calllog import call_log_flush
from tests.resilience.alerts.conftest import later
from tests.support import migrated
from tests.support.fake_upstream import Reply
from tests.support.live_server import postgres_url

pytestmark = pytest.mark.django_db


def calls(count: int, *, failing: bool, fake) -> None:
    fake.script("/v1/models", Reply(500, {"error": "down"}) if failing else Reply(200, {"ok": True}))
    for _ in range(count):
        try:
            upstream("llm").get("/v1/models")
        except exceptions.UpstreamError:
            pass
    call_log_flush()


def migrated_rows(sql: str) -> list[tuple]:
    """`sql`'s rows in the run's migrated template (tests.support.migrated: `manage.py migrate`
    in a process of its own, on the run's engine)."""
    url = postgres_url()
    if url is None:
        with closing(sqlite3.connect(migrated.sqlite_template())) as db:
            return db.execute(sql).fetchall()
    import psycopg

    template = urlunsplit(urlsplit(url)._replace(path=f"/{migrated.postgres_template(url)}"))
    with psycopg.connect(template) as db:
        return db.execute(sql).fetchall()


def test_the_five_seed_rules_ship_as_defaults():
    # What `migrate` leaves, read in the template rather than in this test's database: that one
    # has lost the migration's rows when a transactional test ran before this one in this
    # process, which pytest-xdist's scheduling allows.
    rules = {name: tuple(rest) for name, *rest in migrated_rows(
        f"SELECT name, metric, op, threshold, severity FROM {AlertRule._meta.db_table}")}
    assert set(rules) >= {"success-rate-warning", "success-rate-critical", "latency-p95-slow", "breaker-open",
                          "all-endpoints-down"}
    assert rules["success-rate-warning"] == ("success_rate", "<", 90, "warning")


def test_a_failing_provider_fires_within_for_plus_one_evaluation_once_and_resolves(
        provider, fake, receiver, alerting):
    alerting("success-rate-warning")
    rule = AlertRule.objects.get(name="success-rate-warning")
    t0 = timezone.now()
    calls(20, failing=False, fake=fake)
    assert alerts_evaluate(now=t0) == []

    calls(20, failing=True, fake=fake)  # 50% success in the window from here on
    moves = alerts_evaluate(now=later(t0, 1))
    assert [(m["from"], m["to"]) for m in moves] == [("resolved", "pending")]
    assert alerts_evaluate(now=later(t0, 1 + rule.for_seconds - 15)) == []  # still pending
    assert receiver.posts() == []
    moves = alerts_evaluate(now=later(t0, 1 + rule.for_seconds))  # `for` has passed: this evaluation fires
    assert [(m["subject"], m["to"]) for m in moves] == [("llm", "firing")]

    [post] = receiver.posts()
    assert receiver.verified(post)
    body = post.json()
    assert body["status"] == "firing" and body["rule"]["name"] == "success-rate-warning"
    assert [(a["subject"], a["transition"], a["value"]) for a in body["alerts"]] == [("llm", "firing", 50.0)]

    alerts_evaluate(now=later(t0, 90))  # still firing: no second notification before the repeat interval
    assert len(receiver.posts()) == 1

    calls(200, failing=False, fake=fake)  # recovered: 220 of 240 calls succeed (91.7%)
    moves = alerts_evaluate(now=later(t0, 120))
    assert [(m["to"]) for m in moves] == ["resolved"]
    resolved = receiver.posts()[-1].json()
    assert resolved["status"] == "resolved" and resolved["alerts"][0]["transition"] == "resolved"
    assert len(receiver.posts()) == 2
    history = list(AlertEvent.objects.filter(rule=rule.name).order_by("created_at")
                   .values_list("from_state", "to_state", "notified"))
    assert history == [("resolved", "pending", "none"), ("pending", "firing", "sent"),
                       ("firing", "resolved", "sent")]


def test_a_silence_suppresses_the_notification_until_it_ends(provider, fake, receiver, alerting):
    alerting("success-rate-critical")
    rule = AlertRule.objects.get(name="success-rate-critical")
    rule.for_seconds = 0
    rule.save()
    t0 = timezone.now()
    silence = silence_create(rule=rule, subject="llm", seconds=600, comment="maintenance")
    calls(20, failing=True, fake=fake)
    moves = alerts_evaluate(now=later(t0, 1))
    assert [m["to"] for m in moves] == ["firing"]
    assert receiver.posts() == []
    assert AlertEvent.objects.get(rule=rule.name).notified == "silenced"
    assert alerts_evaluate(now=later(t0, 30)) == []  # silenced: no reminder either

    silence_end(silence=silence)
    moves = alerts_evaluate(now=timezone.now())
    assert [m["to"] for m in moves] == ["repeat"]  # still firing when the silence ended: told now
    [post] = receiver.posts()
    assert post.json()["alerts"][0]["transition"] == "repeat"


def test_a_still_firing_alert_is_notified_again_after_its_repeat_interval(provider, fake, receiver,
                                                                          alerting):
    alerting("success-rate-critical")
    AlertRule.objects.filter(name="success-rate-critical").update(
        for_seconds=0, repeat_interval=600, window=3600)
    t0 = timezone.now()
    calls(20, failing=True, fake=fake)
    alerts_evaluate(now=t0)
    alerts_evaluate(now=later(t0, 599))
    assert len(receiver.posts()) == 1
    alerts_evaluate(now=later(t0, 600))
    assert [p.json()["alerts"][0]["transition"] for p in receiver.posts()] == ["firing", "repeat"]


def test_email_and_slack_receivers_get_the_same_group(provider, fake, receiver, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.RESILIENCE_ALERTS = {"SLACK_WEBHOOK_URL": receiver.root_url + "/slack",
                                  "EMAIL_TO": ["oncall@example.com"]}
    alert_rules_seed()  # a transactional test before this one flushed the migration's rows
    AlertRule.objects.exclude(name="success-rate-critical").update(enabled=False)
    AlertRule.objects.filter(name="success-rate-critical").update(for_seconds=0)
    calls(20, failing=True, fake=fake)
    alerts_evaluate(now=timezone.now())
    [message] = mail.outbox
    assert message.to == ["oncall@example.com"]
    assert message.subject.startswith("[FIRING] success-rate-critical (critical)")
    assert "llm: firing (value 0)" in message.body
    [slack] = receiver.posts("/slack")
    body = slack.json()
    assert body["text"].startswith("[FIRING] success-rate-critical")
    assert body["attachments"][0]["color"] == "#c62828" and "llm: firing" in body["attachments"][0]["text"]


def test_a_receiver_that_refuses_is_tried_again_at_the_next_evaluation(provider, fake, receiver, alerting):
    alerting("success-rate-critical")
    AlertRule.objects.filter(name="success-rate-critical").update(for_seconds=0)
    receiver.script("/hook", Reply(503, "busy"), Reply(200, "ok"), method="POST")
    calls(20, failing=True, fake=fake)
    t0 = timezone.now()
    alerts_evaluate(now=t0)
    assert AlertEvent.objects.get().notified == "failed"
    alerts_evaluate(now=later(t0, 15))
    assert [p.json()["alerts"][0]["transition"] for p in receiver.posts()] == ["firing", "repeat"]
    assert AlertEvent.objects.order_by("id").last().notified == "sent"


def test_an_alert_of_a_disabled_rule_resolves(provider, fake, receiver, alerting):
    alerting("success-rate-critical")
    AlertRule.objects.filter(name="success-rate-critical").update(for_seconds=0)
    calls(20, failing=True, fake=fake)
    alerts_evaluate(now=timezone.now())
    AlertRule.objects.filter(name="success-rate-critical").update(enabled=False)
    alerts_evaluate(now=timezone.now())
    assert Alert.objects.get().state == "resolved"


def test_history_resolved_alerts_and_ended_silences_are_pruned_after_retention(provider, fake, alerting):
    alerting("success-rate-critical")
    AlertRule.objects.filter(name="success-rate-critical").update(for_seconds=0)
    t0 = timezone.now()
    silence = silence_create(rule=None, seconds=60)
    calls(20, failing=True, fake=fake)
    alerts_evaluate(now=t0)
    alerts_evaluate(now=later(t0, 3600))  # out of the window: resolved
    silence_end(silence=silence)
    assert alerts_prune(now=later(t0, 29 * 86400)) == {"events": 0, "alerts": 0, "silences": 0}
    assert alerts_prune(now=later(t0, 31 * 86400)) == {"events": 2, "alerts": 1, "silences": 1}
    assert not Alert.objects.exists() and not AlertEvent.objects.exists()


def test_a_refusing_slack_webhook_is_logged_without_its_url(provider, fake, receiver, settings, caplog):
    secret_path = "/slack/T000/B000/XXXXsecretXXXX"
    receiver.script(secret_path, Reply(404, "no_service"), method="POST")
    settings.RESILIENCE_ALERTS = {"SLACK_WEBHOOK_URL": receiver.root_url + secret_path}
    alert_rules_seed()
    AlertRule.objects.exclude(name="success-rate-critical").update(enabled=False)
    AlertRule.objects.filter(name="success-rate-critical").update(for_seconds=0)
    calls(20, failing=True, fake=fake)
    alerts_evaluate(now=timezone.now())
    assert AlertEvent.objects.get().notified == "failed"
    assert "alert notification to slack refused: HTTP 404" in caplog.text
    assert "XXXXsecretXXXX" not in caplog.text
