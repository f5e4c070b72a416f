"""The per-upstream dashboard page and its data endpoint: who may read them,
what they show from real calls against the fake upstream, the breaker bands
from recorded breaker events, and the bounds on what is read."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.test.utils import CaptureQueriesContext

from aigen.edge.tokens import token_issue
from resilience import exceptions as errors
from resilience import upstream
from resilience.client.context import current_request_id
from resilience.models import BreakerEvent, HourRollup, MinuteRollup
from resilience.telemetry.calllog import call_log_flush
from resilience.telemetry.detail import MAX_FAILURES, RANGES, breaker_bands, upstream_series
from tests.support.fake_upstream import Reply

pytestmark = pytest.mark.django_db

PAGE, DATA = "/dashboard/upstreams/payments", "/api/resilience/upstreams/payments/dashboard"


@pytest.fixture
def staff(django_user_model):
    return django_user_model.objects.create_superuser("ops", email="", password=None)


@pytest.fixture
def traffic(fake, make_upstream, breaker_clock):
    """`payments`: 3 answered calls, then 2 failures (one retry each, request
    ids req-1 and req-2) that open its breaker, then a call it refuses."""
    make_upstream("payments", retry_total=1, breaker_fail_max=2, retry_statuses=[503])
    fake.script("/boom", Reply(503))
    payments = upstream("payments")
    for _ in range(3):
        payments.get("/ok")
    for n in (1, 2):
        token = current_request_id.set(f"req-{n}")
        try:
            with pytest.raises(errors.UpstreamError):
                payments.get("/boom")
        finally:
            current_request_id.reset(token)
    with pytest.raises(errors.BreakerOpen):
        payments.get("/ok")


# -- access ------------------------------------------------------------------------------
def test_anonymous_page_goes_to_login_and_data_is_401_json(client, make_upstream):
    make_upstream("payments")
    response = client.get(PAGE)
    assert (response.status_code, response["Location"]) == (302, f"/admin/login/?next={PAGE}")
    response = client.get(DATA)
    assert response.status_code in (401, 403)
    assert response.json()["success"] is False


def test_non_staff_token_is_refused(client, make_upstream, django_user_model):
    make_upstream("payments")
    user = django_user_model.objects.create_user("viewer", password=None)
    response = client.get(DATA, headers={"Authorization": f"Bearer {token_issue(user=user)}"})
    assert response.status_code == 403
    assert response.json()["error"]["code"]


def test_staff_token_reads_the_data(client, traffic, staff):
    response = client.get(f"{DATA}?range=15m", headers={"Authorization": f"Bearer {token_issue(user=staff)}"})
    assert response.status_code == 200
    body = response.json()
    assert body["name"] == "payments"
    assert body["range"] == {**body["range"], "key": "15m", "step_seconds": 60, "source": "MinuteRollup"}
    assert len(body["series"]["t"]) == 15
    # 6 calls: 3 ok, 2 failed after a retry each, 1 refused by the open breaker.
    assert sum(body["series"]["calls"]) == 6
    assert sum(body["series"]["errors"]) == 3
    assert sum(body["series"]["retries"]) == 2
    assert sum(body["series"]["outcomes"]["ok"]) == 3
    assert sum(body["series"]["outcomes"]["http_error"]) == 2
    assert sum(body["series"]["outcomes"]["breaker_open"]) == 1
    assert [p for p in body["series"]["p95_ms"] if p is not None]
    assert body["stats"]["calls"] == 6
    assert body["breaker"]["state"] == "open"
    assert body["breaker_bands"][-1]["state"] == "open"
    assert body["breaker_bands"][0]["state"] == "closed"
    failures = body["failures"]
    assert [(f["outcome"], f["request_id"]) for f in failures] == [
        ("breaker_open", ""), ("http_error", "req-2"), ("http_error", "req-1")]


def test_bad_range_is_400_naming_the_field_and_unknown_upstream_404(client, traffic, staff):
    client.force_login(staff)
    response = client.get(f"{DATA}?range=2w")
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "range"
    response = client.get("/api/resilience/upstreams/nope/dashboard")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_upstream"
    assert client.get("/dashboard/upstreams/nope").status_code == 404


def test_page_shows_summary_ranges_and_failures_linking_to_the_call_log(client, traffic, staff):
    client.force_login(staff)
    response = client.get(f"{PAGE}?range=24h")
    assert response.status_code == 200
    html = response.content.decode()
    for key in RANGES:
        assert f'data-range="{key}"' in html
    assert 'rs-range-on" aria-current="true" data-range="24h"' in html
    assert "/admin/resilience/calllog/?request_id=req-2" in html
    assert "vendor/uplot/uPlot.iife.min.js" in html
    assert response.context["detail"]["range"]["source"] == "HourRollup"
    # The call-log list accepts the link's filter and shows only that request's rows.
    rows = client.get("/admin/resilience/calllog/?request_id=req-1")
    assert rows.status_code == 200
    assert list(rows.context["cl"].result_list.values_list("request_id", flat=True)) == ["req-1"]


def test_the_overview_cards_link_to_the_page(client, traffic, staff):
    client.force_login(staff)
    assert 'href="/dashboard/upstreams/payments"' in client.get("/dashboard/").content.decode()


# -- what is read ------------------------------------------------------------------------
def test_series_read_the_rollups_not_the_call_log(traffic, django_assert_max_num_queries):
    call_log_flush()
    from django.db import connection

    now = datetime.now(UTC)
    for key in RANGES:
        with CaptureQueriesContext(connection) as queries:
            series = upstream_series(name="payments", span=RANGES[key], now=now)
        assert len(queries) == 1
        table = (HourRollup if RANGES[key].step == 3600 else MinuteRollup)._meta.db_table
        assert table in queries[0]["sql"]
        assert "calllog" not in queries[0]["sql"]
        assert sum(series["calls"]) == 6, key


def test_failures_are_bounded(fake, make_upstream, staff, client):
    make_upstream("payments", retry_total=0, breaker_enabled=False)
    fake.script("/boom", Reply(500))
    for _ in range(MAX_FAILURES + 5):
        with pytest.raises(errors.UpstreamError):
            upstream("payments").get("/boom")
    client.force_login(staff)
    body = client.get(DATA).json()
    assert len(body["failures"]) == MAX_FAILURES
    assert sum(body["series"]["errors"]) == MAX_FAILURES + 5  # counted in full from the rollups


def test_breaker_bands_from_events():
    base = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

    def event(minutes: float, old: str, new: str) -> None:
        row = BreakerEvent.objects.create(upstream="x", from_state=old, to_state=new)
        BreakerEvent.objects.filter(pk=row.pk).update(created_at=base + timedelta(minutes=minutes))

    event(-30, "closed", "open")   # before the range: the range starts open
    event(-29, "open", "half-open")
    event(-29, "half-open", "closed")
    event(10, "closed", "open")
    event(20, "open", "half-open")
    event(21, "half-open", "closed")
    bands = breaker_bands(name="x", since=base, now=base + timedelta(minutes=60), live_state="closed")
    t0 = base.timestamp()
    assert [(b["state"], (b["start"] - t0) / 60, (b["end"] - t0) / 60) for b in bands] == [
        ("closed", 0, 10), ("open", 10, 20), ("half-open", 20, 21), ("closed", 21, 60)]
    # No event in the range: the state the last earlier event left.
    event(-5, "closed", "open")
    bands = breaker_bands(name="x", since=base, now=base + timedelta(minutes=5), live_state="closed")
    assert bands == [{"start": t0, "end": t0 + 300, "state": "open"}]
    # No event at all: the live state.
    assert breaker_bands(name="y", since=base, now=base + timedelta(minutes=5), live_state="half-open") == [
        {"start": t0, "end": t0 + 300, "state": "half-open"}]
