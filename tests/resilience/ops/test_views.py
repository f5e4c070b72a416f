"""The operations API (/api/resilience/) over real HTTP handling: permissions
for every route, the error shape, stats and the call log, and operations
that really act on breakers, the fake upstream and the cache."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import URLPattern, get_resolver
from django.utils import timezone
from rest_framework.test import APIClient

from resilience import exceptions as errors
from resilience import upstream
from resilience.models import CallLog, Upstream
from resilience.telemetry.calllog import call_log_flush, call_log_record
from tests.support.fake_upstream import Reply
from tests.support.roles import api_client, role_user

pytestmark = pytest.mark.django_db

API = "/api/resilience"
READS = [("get", f"{API}/upstreams"), ("get", f"{API}/upstreams/api"), ("get", f"{API}/upstreams/api/calls"),
         ("get", f"{API}/cache/stats"), ("get", f"{API}/findings"), ("get", f"{API}/upstreams/api/findings")]
WRITES = [("post", f"{API}/upstreams/api/breaker/reset"), ("post", f"{API}/upstreams/api/probe"),
          ("delete", f"{API}/upstreams/api/cache"), ("get", f"{API}/resources")]
# Staff-only advisor routes that need a suggestion or a job to answer 200: their
# 401/403/404 are tested in tests/resilience/advisor/test_api.py.
ADVISOR_ACTIONS = {"suggestions/<int:suggestion_id>/apply", "suggestions/<int:suggestion_id>/dismiss",
                   "suggestions/<int:suggestion_id>/rollback", "benchmarks", "benchmarks/<str:job_id>"}
# Breaker controls and alerts: their permission matrix is in tests/resilience/ops/test_breakers.py
# and tests/resilience/alerts/test_api.py.
OPS_ROUTES = {"upstreams/<slug:name>/breakers", "upstreams/<slug:name>/breakers/reset",
              "upstreams/<slug:name>/breakers/open", "alerts", "alerts/silences",
              "alerts/silences/<int:silence_id>/end"}


@pytest.fixture
def user_client() -> APIClient:
    """An API caller: not staff, no permissions."""
    return api_client("user")


@pytest.fixture
def viewer_client() -> APIClient:
    """Staff with view permissions (the matrix of roles: test_permissions.py)."""
    return api_client("viewer")


@pytest.fixture
def staff_client() -> APIClient:
    """Staff with view and change permissions."""
    return api_client("operator")


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert body["success"] is False
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    return body["error"]


def fail_until_open(name: str = "api", times: int = 2) -> None:
    for _ in range(times):
        with pytest.raises(errors.UpstreamError):
            upstream(name).get("/down")


# -- permissions ---------------------------------------------------------------------------------
def test_every_route_is_in_the_permission_matrix():
    from resilience import urls

    routes = {str(p.pattern) for p in urls.urlpatterns if isinstance(p, URLPattern)}
    tested = {path.removeprefix(f"{API}/").replace("/api", "/<slug:name>", 1) for _, path in READS + WRITES}
    assert routes == tested | ADVISOR_ACTIONS | OPS_ROUTES
    assert any(str(p.pattern) == "api/resilience/" for p in get_resolver().url_patterns)


@pytest.mark.parametrize(("method", "path"), READS + WRITES)
def test_anonymous_gets_401_in_the_error_shape(make_upstream, method, path):
    make_upstream()
    response = getattr(APIClient(), method)(path)
    assert_error(response, 401, "not_authenticated")
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(("method", "path"), READS + WRITES)
def test_a_bad_token_gets_401(make_upstream, method, path):
    make_upstream()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer not-a-token")
    assert_error(getattr(client, method)(path), 401, "authentication_failed")


@pytest.mark.parametrize(("method", "path"), READS)
def test_viewers_may_read(make_upstream, viewer_client, method, path):
    make_upstream()
    response = getattr(viewer_client, method)(path)
    assert response.status_code == 200, response.content
    assert response.json()["success"] is True


# Cache statistics are open to any caller; call logs show a caller its own calls (test_permissions.py).
@pytest.mark.parametrize(("method", "path"), [r for r in READS if not r[1].endswith(("/stats", "/calls"))])
def test_users_without_view_permission_may_not_read_policies_or_findings(make_upstream, user_client,
                                                                          method, path):
    make_upstream()
    assert_error(getattr(user_client, method)(path), 403, "permission_denied")


@pytest.mark.parametrize(("method", "path"), WRITES)
def test_users_may_not_write(make_upstream, user_client, fake, method, path):
    make_upstream(health_path="/health")
    assert_error(getattr(user_client, method)(path), 403, "permission_denied")
    assert fake.count() == 0  # the probe never ran


@pytest.mark.parametrize(("method", "path"), READS + WRITES)
def test_staff_may_do_everything(make_upstream, staff_client, method, path):
    make_upstream(health_path="/health")
    response = getattr(staff_client, method)(path)
    assert response.status_code == 200, response.content
    assert response.json()["success"] is True


def test_session_login_works_too(make_upstream):
    make_upstream()
    client = APIClient()
    client.force_login(role_user("viewer"))
    assert client.get(f"{API}/upstreams").status_code == 200


@pytest.mark.parametrize(("method", "path"), [(m, p.replace("/upstreams/api", "/upstreams/nope"))
                                              for m, p in READS + WRITES if "/upstreams/" in p])
def test_unknown_upstream_is_a_404_in_the_error_shape(staff_client, method, path):
    error = assert_error(getattr(staff_client, method)(path), 404, "unknown_upstream")
    assert error["upstream"] == "nope"


# -- reads ----------------------------------------------------------------------------------------
def test_list_shows_policy_breaker_and_fresh_calls(fake, make_upstream, viewer_client):
    make_upstream("api", cache_ttl=60)
    make_upstream("other", breaker_enabled=False)
    fake.script("/bad", Reply(500))
    upstream("api").get("/x")
    upstream("api").get("/x")  # a cache hit
    with pytest.raises(errors.UpstreamError):
        upstream("api").get("/bad")
    # No flush here: the view flushes the buffered call logs itself.
    body = viewer_client.get(f"{API}/upstreams").json()
    by_name = {u["name"]: u for u in body["upstreams"]}
    assert list(by_name) == ["api", "other"]
    api = by_name["api"]
    assert api["base_url"] == fake.url and api["enabled"] is True
    assert api["policy"]["cache_ttl"] == 60 and api["policy"]["retry_total"] == 2
    assert api["breaker"]["state"] == "closed" and api["breaker"]["retry_after"] is None
    stats = api["stats"]
    assert (stats["calls"], stats["errors"], stats["window_seconds"]) == (3, 1, 300)
    assert stats["error_rate"] == pytest.approx(1 / 3, abs=1e-3)
    assert stats["cache_hit_rate"] == pytest.approx(1 / 3, abs=1e-3)
    assert stats["p95_ms"] > 0
    assert by_name["other"]["breaker"]["state"] == "disabled"


def test_list_shows_an_open_breaker_with_retry_after(fake, make_upstream, viewer_client, breaker_clock):
    make_upstream(retry_total=0, breaker_fail_max=2, breaker_reset_timeout=30)
    fake.script("/down", Reply(503))
    fail_until_open()
    breaker_clock.advance(10)
    [api] = viewer_client.get(f"{API}/upstreams").json()["upstreams"]
    assert api["breaker"]["state"] == "open"
    assert api["breaker"]["retry_after"] == pytest.approx(20, abs=0.01)


def test_detail_has_the_full_policy_without_secrets(fake, make_upstream, viewer_client, monkeypatch):
    monkeypatch.setenv("UPSTREAM_API_TOKEN", "s3cr3t-value-never-shown")
    make_upstream(auth_kind="bearer", auth_env_var="UPSTREAM_API_TOKEN", description="the API",
                  retry_statuses=[503], default_headers={"Accept": "application/json"})
    upstream("api").get("/x")
    assert fake.requests[0].headers["Authorization"] == "Bearer s3cr3t-value-never-shown"
    response = viewer_client.get(f"{API}/upstreams/api")
    assert b"s3cr3t" not in response.content
    policy = response.json()["upstream"]
    expected = {f.name for f in Upstream._meta.concrete_fields} - {"id"}
    assert set(policy) == expected
    assert policy["auth_env_var"] == "UPSTREAM_API_TOKEN"
    assert policy["retry_statuses"] == [503]
    assert policy["default_headers"] == {"Accept": "application/json"}


def test_detail_has_stats_per_window_and_recent_failures(fake, make_upstream, viewer_client):
    make_upstream(retry_total=1, breaker_fail_max=10)
    fake.script("/flaky", Reply(503), Reply(200, body={"ok": True}))
    fake.script("/gone", Reply(404))
    upstream("api").get("/flaky")  # one retry
    with pytest.raises(errors.UpstreamHTTPError):
        upstream("api").get("/gone")
    call_log_record({"created_at": timezone.now() - timedelta(hours=2), "upstream": "api", "method": "GET",
                     "path": "/old", "status": 500, "outcome": "http_error", "latency_ms": 5, "attempts": 1,
                     "retries": [], "cache_hit": False, "breaker_state": "", "request_id": "", "error": ""})
    call_log_flush()
    old = CallLog.objects.get(path="/old")
    body = viewer_client.get(f"{API}/upstreams/api").json()
    assert body["breaker"]["state"] == "closed"
    assert set(body["stats"]) == {"5m", "1h", "24h", "7d"}
    five, day, week = body["stats"]["5m"], body["stats"]["24h"], body["stats"]["7d"]
    assert (five["calls"], five["errors"], five["retries"], five["breaker_trips"]) == (2, 1, 1, 0)
    assert five["outcomes"] == {"http_error": 1, "ok": 1}
    assert day["calls"] == 3 and day["window_seconds"] == 86400
    assert week["calls"] == 3 and week["window_seconds"] == 7 * 86400
    assert all(five[k] is not None for k in ("p50_ms", "p95_ms", "p99_ms"))
    failures = body["recent_failures"]
    assert [f["path"] for f in failures] == ["/gone", "/old"]
    assert failures[1]["id"] == old.id and failures[0]["status"] == 404


def make_logs(count: int, **fields) -> None:
    now = timezone.now()
    CallLog.objects.bulk_create([
        CallLog(**{"created_at": now - timedelta(seconds=i), "upstream": "api", "method": "GET",
                   "path": f"/p{i}", "status": 200, "outcome": "ok", "latency_ms": 1.0, "attempts": 1,
                   **fields}) for i in range(count)])


def test_calls_are_paginated_newest_first(make_upstream, viewer_client):
    make_upstream()
    make_logs(5)
    make_logs(2, upstream="elsewhere")
    body = viewer_client.get(f"{API}/upstreams/api/calls", {"page_size": 2}).json()
    assert body["success"] is True and body["count"] == 5
    assert body["sampling"] == {"success_sample_rate": 1.0, "note": "Every call has a row."}
    assert [c["path"] for c in body["results"]] == ["/p0", "/p1"]
    assert body["previous"] is None and "page=2" in body["next"]
    last = viewer_client.get(f"{API}/upstreams/api/calls", {"page_size": 2, "page": 3}).json()
    assert [c["path"] for c in last["results"]] == ["/p4"] and last["next"] is None
    row = last["results"][0]
    assert set(row) == {"id", "created_at", "upstream", "method", "path", "status", "outcome", "latency_ms",
                        "attempts", "retries", "cache_hit", "breaker_state", "request_id", "error",
                        "endpoint"}
    assert_error(viewer_client.get(f"{API}/upstreams/api/calls", {"page": 9}), 404, "not_found")


def test_calls_page_size_has_a_default_and_a_maximum(make_upstream, viewer_client):
    make_upstream()
    make_logs(501)
    assert len(viewer_client.get(f"{API}/upstreams/api/calls").json()["results"]) == 50
    page = viewer_client.get(f"{API}/upstreams/api/calls", {"page_size": 10_000}).json()
    assert len(page["results"]) == 500


def test_calls_include_calls_made_a_moment_ago(fake, make_upstream, viewer_client):
    make_upstream()
    upstream("api").get("/fresh")
    [row] = viewer_client.get(f"{API}/upstreams/api/calls").json()["results"]
    assert (row["path"], row["outcome"], row["status"], row["attempts"]) == ("/fresh", "ok", 200, 1)


def test_calls_filters(make_upstream, viewer_client):
    make_upstream()
    now = timezone.now()
    make_logs(3)
    make_logs(2, status=503, outcome="http_error", created_at=now - timedelta(hours=1))
    make_logs(1, status=None, outcome="timeout", created_at=now - timedelta(hours=3))

    def paths(**params) -> list[str]:
        response = viewer_client.get(f"{API}/upstreams/api/calls", params)
        assert response.status_code == 200, response.content
        return [c["outcome"] for c in response.json()["results"]]

    assert paths(outcome="http_error") == ["http_error", "http_error"]
    assert paths(status=503) == ["http_error", "http_error"]
    assert paths(outcome="timeout") == ["timeout"]
    since = (now - timedelta(minutes=30)).isoformat()
    assert paths(since=since) == ["ok"] * 3
    until = (now - timedelta(minutes=30)).isoformat()
    assert paths(until=until) == ["http_error", "http_error", "timeout"]
    window = {"since": (now - timedelta(hours=2)).isoformat(), "until": until}
    assert paths(**window) == ["http_error", "http_error"]
    assert paths(since="2000-01-01T00:00:00Z", outcome="ok", status=200) == ["ok"] * 3


@pytest.mark.parametrize(("params", "field"), [
    ({"outcome": "exploded"}, "outcome"),
    ({"status": "abc"}, "status"),
    ({"status": "42"}, "status"),
    ({"since": "yesterday"}, "since"),
    ({"until": "2024-13-45T99:00"}, "until"),
    ({"since": "2024-02-01T00:00:00Z", "until": "2024-01-01T00:00:00Z"}, "until"),
])
def test_bad_call_filters_are_a_400_naming_the_field(make_upstream, viewer_client, params, field):
    make_upstream()
    error = assert_error(viewer_client.get(f"{API}/upstreams/api/calls", params), 400, "invalid")
    assert error["field"] == field
    assert error["message"].startswith(f"{field}:")


def test_cache_stats(fake, make_upstream, viewer_client):
    make_upstream(cache_ttl=60)
    upstream("api").get("/c")
    upstream("api").get("/c")
    body = viewer_client.get(f"{API}/cache/stats").json()
    assert set(body) == {"success", "backend", "redis_configured", "fallback", "scope", "hits", "misses",
                         "sets", "deletes", "errors", "fallbacks", "total_requests", "hit_rate", "hit_ratio"}
    assert body["backend"] in ("redis", "memory") and body["fallback"] is False
    assert body["hits"] >= 1 and body["sets"] >= 1
    assert body["total_requests"] == body["hits"] + body["misses"]


# -- operations ---------------------------------------------------------------------------------
def test_breaker_reset_closes_an_open_breaker(fake, make_upstream, staff_client):
    make_upstream(retry_total=0, breaker_fail_max=2)
    fake.script("/down", Reply(500))
    fail_until_open()
    with pytest.raises(errors.BreakerOpen):
        upstream("api").get("/ok")
    assert staff_client.get(f"{API}/upstreams/api").json()["breaker"]["state"] == "open"

    body = staff_client.post(f"{API}/upstreams/api/breaker/reset").json()
    assert body == {"success": True, "upstream": "api", "breaker": {
        "state": "closed", "failures": 0, "fail_max": 2, "opened_at": body["breaker"]["opened_at"],
        "retry_after": None}}
    assert upstream("api").get("/ok").status_code == 200  # calls pass again
    detail = staff_client.get(f"{API}/upstreams/api").json()
    assert detail["breaker"]["state"] == "closed"
    assert detail["stats"]["5m"]["breaker_trips"] == 1
    assert detail["stats"]["5m"]["outcomes"]["breaker_open"] == 1


def test_probe_makes_one_real_call_to_the_health_path(fake, make_upstream, staff_client):
    make_upstream(health_path="/health", cache_ttl=60)
    fake.script("/health", Reply(200, body={"up": True}))
    for _ in range(2):  # never from the cache
        body = staff_client.post(f"{API}/upstreams/api/probe").json()
        assert body["path"] == "/health"
        probe = body["probe"]
        assert (probe["ok"], probe["status"], probe["error"], probe["attempts"]) == (True, 200, None, 1)
        assert probe["latency_ms"] > 0
    assert fake.count("/health") == 2
    call_log_flush()
    assert CallLog.objects.filter(path="/health", outcome="ok").count() == 2


def test_probe_reports_a_failing_upstream(fake, make_upstream, staff_client):
    make_upstream(health_path="/health", retry_total=0, breaker_fail_max=1)
    fake.script("/health", Reply(503))
    probe = staff_client.post(f"{API}/upstreams/api/probe").json()["probe"]
    assert (probe["ok"], probe["status"]) == (False, 503)
    probe = staff_client.post(f"{API}/upstreams/api/probe").json()["probe"]  # the breaker opened
    assert (probe["ok"], probe["status"], probe["error"]["code"]) == (False, None, "breaker_open")
    assert probe["error"]["retry_after"] > 0
    fake.stop()
    staff_client.post(f"{API}/upstreams/api/breaker/reset")
    probe = staff_client.post(f"{API}/upstreams/api/probe").json()["probe"]
    assert probe["error"]["code"] == "upstream_connection_error"


def test_cache_delete_removes_this_upstreams_responses_and_counts_them(fake, make_upstream, staff_client):
    make_upstream("api", cache_ttl=60)
    make_upstream("other", cache_ttl=60)
    for path in ("/a", "/b", "/c"):
        upstream("api").get(path)
    upstream("other").get("/a")
    assert staff_client.delete(f"{API}/upstreams/api/cache").json() == {
        "success": True, "upstream": "api", "deleted": 3}
    assert staff_client.delete(f"{API}/upstreams/api/cache").json()["deleted"] == 0
    before = fake.count()
    assert upstream("api").get("/a").from_cache is False  # fetched again
    assert upstream("other").get("/a").from_cache is True  # untouched
    assert fake.count() == before + 1


def test_calls_say_that_successes_are_sampled_and_at_what_rate(make_upstream, viewer_client):
    make_upstream(log_sample_rate=0.01)
    sampling = viewer_client.get(f"{API}/upstreams/api/calls").json()["sampling"]
    assert sampling["success_sample_rate"] == 0.01
    assert "successful calls are sampled: 1.00% of them keep a row" in sampling["note"]
