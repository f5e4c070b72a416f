"""Suggestions: stored from findings, applied as a normal policy change with
history, rolled back, dismissed, auto-applied only for named kinds, and the
effect reported from the same figures before and after."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model

from resilience.advisor import services
from resilience.advisor.models import Suggestion
from resilience.models import Upstream
from tests.resilience.advisor.conftest import NOW, minute_delta, traffic

pytestmark = pytest.mark.django_db


@pytest.fixture
def wasteful(healthy):
    """An upstream whose retries never help (a retry_waste suggestion)."""
    row = healthy("api", retry_total=3)
    traffic("api", since=timedelta(hours=2), every=2,
            make=lambda _: minute_delta(calls=1, attempts=4, outcome="http_error", signals={"retried": 1}))
    return row


@pytest.fixture
def staff(db):
    return get_user_model().objects.create_user("ops", password="x", is_staff=True)


def test_a_run_stores_one_open_suggestion_per_finding(wasteful):
    first = services.advisor_run(now=NOW)
    again = services.advisor_run(now=NOW)
    rows = Suggestion.objects.filter(kind="retry_waste")
    assert rows.count() == 1
    row = rows.get()
    assert (row.field, row.from_value, row.to_value, row.status) == ("retry_total", 3, 0, "open")
    assert row.evidence["figures"]["retried_calls"] == 60
    assert [s.pk for s in first["suggestions"]] == [s.pk for s in again["suggestions"]]


def test_apply_is_a_policy_change_with_history_and_rollback_restores(wasteful, staff):
    services.advisor_run(now=NOW)
    row = Suggestion.objects.get(kind="retry_waste")
    before = Upstream.history.filter(name="api").count()

    services.suggestion_apply(suggestion_id=row.pk, user=staff)
    policy = Upstream.objects.get(name="api")
    assert policy.retry_total == 0
    record = policy.history.order_by("-history_id").first()
    assert record.history_user == staff
    assert f"suggestion {row.pk}" in record.history_change_reason
    row.refresh_from_db()
    assert (row.status, row.history_id, row.decided_by) == ("applied", record.history_id, staff)

    # The admin's revert works on that history like on any edit: the previous record holds 3.
    assert record.prev_record.retry_total == 3
    services.suggestion_rollback(suggestion_id=row.pk, user=staff)
    assert Upstream.objects.get(name="api").retry_total == 3
    assert Upstream.history.filter(name="api").count() == before + 2
    row.refresh_from_db()
    assert row.status == "rolled_back"


def test_apply_refuses_when_the_field_changed_since(wasteful, staff):
    services.advisor_run(now=NOW)
    row = Suggestion.objects.get(kind="retry_waste")
    Upstream.objects.filter(name="api").update(retry_total=5)
    with pytest.raises(services.SuggestionConflict):
        services.suggestion_apply(suggestion_id=row.pk, user=staff)
    assert Upstream.objects.get(name="api").retry_total == 5
    row.refresh_from_db()
    assert row.status == "open"


def test_a_dismissed_suggestion_is_not_proposed_again(wasteful, staff):
    services.advisor_run(now=NOW)
    row = Suggestion.objects.get(kind="retry_waste")
    services.suggestion_dismiss(suggestion_id=row.pk, user=staff)
    services.advisor_run(now=NOW)
    statuses = Suggestion.objects.filter(kind="retry_waste").values_list("status", flat=True)
    assert list(statuses) == ["dismissed"]
    with pytest.raises(services.SuggestionConflict):
        services.suggestion_apply(suggestion_id=row.pk, user=staff)


def test_an_open_suggestion_becomes_outdated_when_its_finding_goes(wasteful):
    services.advisor_run(now=NOW)
    later = services.advisor_run(now=NOW + timedelta(days=2))  # the wasted retries left the 24 h window
    assert not [s for s in later["suggestions"] if s.kind == "retry_waste"]
    assert Suggestion.objects.get(kind="retry_waste").status == "outdated"


def test_nothing_is_applied_without_a_person_by_default(wasteful):
    services.advisor_run(now=NOW)
    assert Upstream.objects.get(name="api").retry_total == 3


def test_kinds_named_in_the_setting_apply_themselves(wasteful, settings):
    settings.RESILIENCE_ADVISOR = {"AUTO_APPLY_KINDS": ["retry_waste"]}
    services.advisor_run(now=NOW)
    assert Upstream.objects.get(name="api").retry_total == 0
    row = Suggestion.objects.get(kind="retry_waste")
    assert row.status == "applied" and row.decided_by is None
    assert "automatically" in Upstream.history.filter(name="api").order_by("-history_id").first() \
        .history_change_reason


def test_the_effect_compares_the_same_figures_before_and_after(wasteful, staff):
    services.advisor_run(now=NOW)
    row = Suggestion.objects.get(kind="retry_waste")
    row = services.suggestion_apply(suggestion_id=row.pk, user=staff, now=NOW)
    assert services.suggestion_effect(row, now=NOW + timedelta(minutes=5)) is None  # too soon
    # After the change: the same traffic, no retries any more.
    traffic("api", since=timedelta(0), until=timedelta(minutes=-30), now=NOW,
            make=lambda _: minute_delta(calls=30))
    effect = services.suggestion_effect(row, now=NOW + timedelta(minutes=30))
    assert effect["window_seconds"] == 1800
    assert effect["before"]["retries"] > 0 and effect["after"]["retries"] == 0
    assert set(effect["before"]) == set(effect["after"])
    row.refresh_from_db()
    assert row.effect == effect


def test_unknown_suggestion():
    with pytest.raises(services.SuggestionNotFound):
        services.suggestion_apply(suggestion_id=999999)


def test_the_scheduled_run_is_a_job_that_applies_allowed_kinds(policy, settings):
    from django.utils import timezone

    from resilience.advisor.tasks import advisor_run_job
    from resilience.jobs.schedules import schedules

    assert any(s.key == "advise" and s.job == "resilience.advise" for s in schedules())
    policy("api", retry_total=2, read_timeout=0.5)
    traffic("api", since=timedelta(hours=2), every=2, now=timezone.now(),
            make=lambda _: minute_delta(calls=1, attempts=3, outcome="http_error", signals={"retried": 1}))
    settings.RESILIENCE_ADVISOR = {"AUTO_APPLY_KINDS": ["retry_waste"]}
    result = advisor_run_job()
    assert result["findings"] >= 1
    assert Upstream.objects.get(name="api").retry_total == 0
