"""The operations dashboard: staff-only page and JSON, numbers from real calls
through the client against the fake upstream, the per-minute series."""
from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from django.urls import reverse

from resilience import exceptions as errors
from resilience import upstream
from resilience.models import Outcome
from resilience.telemetry.calllog import call_log_flush, call_log_record
from resilience.telemetry.timeseries import upstream_timeseries
from tests.support.fake_upstream import Reply

pytestmark = pytest.mark.django_db

PAGE, DATA = "/dashboard/", "/dashboard/data"


@pytest.fixture
def staff_client(client, django_user_model):
    # No password: hashing one costs most of a second, and force_login needs none.
    user = django_user_model.objects.create_superuser("ops", email="", password=None)
    client.force_login(user)
    return client


@pytest.fixture
def traffic(fake, make_upstream, breaker_clock):
    """`payments`: 3 answered calls, 2 failures that open its breaker (fail_max
    2), 1 call refused by the open breaker. `search`: one cached answer.
    Nothing is flushed: the dashboard must flush the call-log buffer itself."""
    make_upstream("payments", retry_total=0, breaker_fail_max=2)
    make_upstream("search", cache_ttl=60)
    fake.script("/boom", Reply(503))
    payments = upstream("payments")
    for _ in range(3):
        payments.get("/ok")
    for _ in range(2):
        with pytest.raises(errors.UpstreamError):
            payments.get("/boom")
    with pytest.raises(errors.BreakerOpen):
        payments.get("/ok")
    upstream("search").get("/q")
    upstream("search").get("/q")  # from the cache


def card(snapshot: dict, name: str) -> dict:
    return next(u for u in snapshot["upstreams"] if u["name"] == name)


# -- access ------------------------------------------------------------------------------
@pytest.mark.parametrize("url", [PAGE, DATA])
def test_anonymous_is_sent_to_the_admin_login(client, url):
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"] == f"/admin/login/?next={url}"


@pytest.mark.parametrize("url", [PAGE, DATA])
def test_non_staff_users_are_sent_to_the_admin_login(client, django_user_model, url):
    client.force_login(django_user_model.objects.create_user("someone"))
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def test_routes_are_named():
    assert reverse("resilience-dashboard") == PAGE
    assert reverse("resilience-dashboard-data") == DATA


def test_admin_index_links_to_the_dashboard(staff_client):
    response = staff_client.get("/admin/")
    assert response.status_code == 200
    assert f'<a href="{PAGE}">Upstream dashboard</a>' in response.content.decode()
    assert "Recent actions" in response.content.decode()  # the stock index is still there


# -- the page ------------------------------------------------------------------------------
def test_staff_sees_a_card_per_upstream_with_the_numbers_of_real_calls(staff_client, traffic):
    response = staff_client.get(PAGE)
    assert response.status_code == 200
    assert "no-cache" in response["Cache-Control"]
    snapshot = response.context["snapshot"]

    payments = card(snapshot, "payments")
    assert payments["breaker"]["state"] == "open"
    assert payments["stats"]["calls"] == 6
    assert payments["stats"]["errors"] == 3  # two 503s and the refused call
    assert payments["display"] == {
        "state": "open", "breaker_detail": "next probe in 30 s \u00b7 2/2 consecutive failures",
        "calls": "6", "errors": "3", "error_rate": "50.0%",
        "p50": payments["display"]["p50"], "p95": payments["display"]["p95"],
        "p99": payments["display"]["p99"], "hit_rate": "0.0%", "retries": "0", "trips": "1",
        "probe": "not probed",
    }
    assert payments["display"]["p95"].endswith("ms")
    search = card(snapshot, "search")
    assert (search["breaker"]["state"], search["stats"]["calls"]) == ("closed", 2)
    assert search["display"]["hit_rate"] == "50.0%"

    html = response.content.decode()
    assert html.count('class="rs-card ') == 3  # two cards and the template for new ones
    assert 'class="rs-card state-open" data-upstream="payments"' in html
    assert 'class="rs-card state-closed" data-upstream="search"' in html
    assert '<dd data-field="error_rate">50.0%</dd>' in html
    assert '<span class="rs-state" data-field="state" title="circuit breaker">open</span>' in html
    assert "next probe in 30 s" in html
    # The script is the project's own, and the first paint's data is embedded for it.
    assert '<script src="/static/resilience/dashboard.js" defer></script>' in html
    assert '<script id="rs-snapshot" type="application/json">' in html
    assert 'data-url="/dashboard/data" data-refresh-seconds="5"' in html


def test_the_page_shows_the_cache_backend(staff_client):
    html = staff_client.get(PAGE).content.decode()
    assert '<dd data-field="backend">' in html
    assert '<dd data-field="fallback">no</dd>' in html
    assert 'No upstreams yet' in html


def test_refresh_interval_is_bounded(staff_client):
    for query, seconds in [("", 5), ("?refresh=1", 1), ("?refresh=0", 1), ("?refresh=9999", 300),
                           ("?refresh=x", 5)]:
        assert staff_client.get(PAGE + query).context["refresh_seconds"] == seconds, query


# -- the JSON the page polls -------------------------------------------------------------
def test_data_endpoint_shape(staff_client, traffic):
    response = staff_client.get(DATA)
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert "no-cache" in response["Cache-Control"]
    body = json.loads(response.content)
    assert set(body) == {"generated_at", "stats_window", "chart", "upstreams", "cache", "alerts"}
    assert body["chart"] == {"window_seconds": 3600, "bucket_seconds": 60}
    assert [u["name"] for u in body["upstreams"]] == ["payments", "search"]
    payments = body["upstreams"][0]
    assert set(payments) == {"name", "base_url", "description", "enabled", "breaker", "stats", "series",
                             "probe", "display", "accounts", "admission", "admission_line"}
    assert {"state", "failures", "fail_max", "retry_after"} <= set(payments["breaker"])
    assert {"calls", "errors", "error_rate", "p50_ms", "p95_ms", "p99_ms", "cache_hit_rate", "retries",
            "breaker_trips"} <= set(payments["stats"])
    assert len(payments["series"]) == 60
    assert set(payments["series"][0]) == {"start", "calls", "errors", "p95_ms"}
    assert sum(b["calls"] for b in payments["series"]) == 6
    assert sum(b["errors"] for b in payments["series"]) == 3
    assert {"backend", "fallback", "hits", "misses", "hit_rate", "display"} <= set(body["cache"])


# -- the per-minute series ---------------------------------------------------------------
NOW = datetime(2026, 3, 1, 12, 30, 30, tzinfo=UTC)


def log(at: datetime, outcome: str = Outcome.OK, latency_ms: float = 10.0, attempts: int = 1,
        name: str = "api") -> None:
    call_log_record({"created_at": at, "upstream": name, "method": "GET", "path": "/x", "outcome": outcome,
                     "latency_ms": latency_ms, "attempts": attempts, "retries": [], "cache_hit": False,
                     "breaker_state": "", "request_id": "", "error": "",
                     "status": 200 if outcome == Outcome.OK else None})


def test_timeseries_buckets_align_to_the_minute_and_end_with_the_current_one():
    log(datetime(2026, 3, 1, 11, 30, 59, tzinfo=UTC))  # before the window: left out
    log(datetime(2026, 3, 1, 11, 31, 0, tzinfo=UTC))  # first bucket
    for ms in range(1, 21):
        log(datetime(2026, 3, 1, 12, 29, 5, tzinfo=UTC), latency_ms=float(ms))
    log(datetime(2026, 3, 1, 12, 30, 1, tzinfo=UTC), outcome=Outcome.HTTP_ERROR, latency_ms=300.0)
    log(datetime(2026, 3, 1, 12, 30, 2, tzinfo=UTC), outcome=Outcome.BREAKER_OPEN, latency_ms=0.1, attempts=0)
    log(datetime(2026, 3, 1, 12, 30, 3, tzinfo=UTC), outcome=Outcome.CACHE_HIT, latency_ms=0.2, attempts=0)
    log(datetime(2026, 3, 1, 12, 30, 20, tzinfo=UTC), name="other")
    call_log_flush()
    series = upstream_timeseries(name="api", now=NOW)
    assert len(series) == 60
    assert series[0]["start"] == "2026-03-01T11:31:00+00:00"
    assert series[-1]["start"] == "2026-03-01T12:30:00+00:00"
    assert (series[0]["calls"], series[0]["errors"]) == (1, 0)
    assert series[0]["p95_ms"] == pytest.approx(10.0, rel=0.02)
    # 20 calls of 1..20 ms: the nearest-rank p95 is 19 ms (read from the histogram: within 2%).
    assert (series[-2]["calls"], series[-2]["errors"]) == (20, 0)
    assert series[-2]["p95_ms"] == pytest.approx(19.0, rel=0.02)
    # Refused and cached calls count as calls (one as an error) but have no upstream latency.
    assert (series[-1]["calls"], series[-1]["errors"]) == (3, 2)
    assert series[-1]["p95_ms"] == pytest.approx(300.0, rel=0.02)
    assert sum(b["calls"] for b in series) == 24
    assert all(b["p95_ms"] is None for b in series[1:-2])


def test_timeseries_of_a_quiet_upstream_is_all_zero():
    series = upstream_timeseries(name="api", window=timedelta(minutes=10), bucket=timedelta(minutes=2),
                                 now=NOW)
    assert len(series) == 5
    assert series[-1]["start"] == "2026-03-01T12:30:00+00:00"
    assert {(b["calls"], b["errors"], b["p95_ms"]) for b in series} == {(0, 0, None)}


def test_timeseries_in_hour_buckets_reads_hour_rollups():
    log(datetime(2026, 3, 1, 10, 59, 0, tzinfo=UTC))
    log(datetime(2026, 3, 1, 11, 0, 0, tzinfo=UTC), outcome=Outcome.TIMEOUT)
    log(datetime(2026, 3, 1, 12, 30, 0, tzinfo=UTC))
    call_log_flush()
    series = upstream_timeseries(name="api", window=timedelta(hours=3), bucket=timedelta(hours=1), now=NOW)
    assert [(b["start"][11:16], b["calls"], b["errors"]) for b in series] == [
        ("10:00", 1, 0), ("11:00", 1, 1), ("12:00", 1, 0)]


@pytest.mark.parametrize("bucket", [timedelta(0), timedelta(minutes=7), timedelta(seconds=30)])
def test_timeseries_refuses_a_bucket_that_does_not_divide_the_window_or_is_not_whole_minutes(bucket):
    with pytest.raises(ValueError):
        upstream_timeseries(name="api", bucket=bucket, now=NOW)


def test_each_card_shows_the_last_health_probe(staff_client, make_upstream):
    from resilience.jobs.models import ProbeResult

    make_upstream(name="api", health_path="/health", probe_interval=30)
    make_upstream(name="quiet")
    ProbeResult.objects.create(upstream="api", ok=True, status=200)
    ProbeResult.objects.create(upstream="api", ok=False, status=503)  # the last one counts
    snapshot = json.loads(staff_client.get(reverse("resilience-dashboard-data")).content)
    api, quiet = card(snapshot, "api"), card(snapshot, "quiet")
    assert api["probe"]["healthy"] is False and api["display"]["probe"].startswith("unhealthy (503)")
    assert quiet["probe"] is None and quiet["display"]["probe"] == "not probed"
    assert '<dd data-field="probe">unhealthy (503)' in staff_client.get(PAGE).content.decode()


def test_an_upstream_with_endpoint_limits_shows_its_admission_by_priority(staff_client, fake, make_upstream):
    from resilience.client.context import priority_bound
    from resilience.models import Endpoint

    row = make_upstream("limited", retry_total=0)
    Endpoint.objects.create(upstream=row, name="account", base_url=fake.url, rpm_limit=100)
    make_upstream("open")
    with priority_bound("low"):
        upstream("limited").get("/ok")
    upstream("limited").get("/ok")
    data = staff_client.get(DATA).json()
    limited = card(data, "limited")["admission"]["priorities"]
    assert limited["low"]["admitted"] == 1 and limited["normal"]["admitted"] == 1
    assert limited["high"] == {"waiting": 0, "admitted": 0, "mean_wait_s": 0.0, "max_wait_s": 0.0}
    assert card(data, "open")["admission"] is None
    page = staff_client.get(PAGE).content.decode()
    assert "low: 0 waiting, 1 admitted" in page
