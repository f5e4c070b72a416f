"""The resilient client against a real HTTP server on loopback that misbehaves
on purpose: retries, deadlines, breaker, cache, single-flight, SSRF, call logs."""
from __future__ import annotations

import itertools
import threading
import time

import pytest
import requests

from resilience import exceptions as errors
from resilience import upstream
from resilience.client import reset_clients
from resilience.client.context import current_request_id
from resilience.client.responses import NearCache
from resilience.models import BreakerEvent, CallLog, Upstream
from resilience.telemetry.calllog import call_log_flush
from tests.support.fake_upstream import Reply

pytestmark = pytest.mark.django_db


def logs(**filters) -> list[CallLog]:
    call_log_flush()
    return list(CallLog.objects.filter(**filters).order_by("id"))


# -- basics and URL safety -------------------------------------------------------------------
def test_get_joins_path_under_base_path_and_marks_response(fake, make_upstream):
    make_upstream(base_url=fake.url + "/v1")
    response = upstream("api").get("/items", params={"q": "x"})
    assert response.status_code == 200
    assert response.json() == {"path": "/v1/items", "method": "GET", "query": {"q": "x"}}
    assert (response.from_cache, response.stale, response.attempts) == (False, False, 1)
    assert upstream("api").get("items").json()["path"] == "/v1/items"


@pytest.mark.parametrize("path", [
    "http://evil.example/x", "https://127.0.0.1:1/x", "//evil.example/x", "/../secret", "a/../../b",
    "/%2e%2e/admin", "/a%2fb/../../..", "\\\\evil\\x", "/x\r\nHost: evil",
])
def test_paths_that_would_leave_the_base_url_are_refused(fake, make_upstream, path):
    make_upstream(base_url=fake.url + "/v1")
    with pytest.raises(errors.InvalidUpstreamPath):
        upstream("api").get(path)
    assert fake.count() == 0
    assert logs()[0].outcome == "refused"


def test_dot_dot_inside_the_base_path_is_fine(fake, make_upstream):
    make_upstream(base_url=fake.url + "/v1")
    assert upstream("api").get("/a/../b").json()["path"] == "/v1/b"


def test_unknown_and_disabled_upstreams(make_upstream):
    with pytest.raises(errors.UnknownUpstream):
        upstream("nope")
    make_upstream(enabled=False)
    with pytest.raises(errors.UpstreamDisabled):
        upstream("api").get("/x")


def test_redirects_are_not_followed(fake, make_upstream):
    make_upstream()
    fake.script("/moved", Reply(302, headers={"Location": "http://evil.example/"}))
    response = upstream("api").get("/moved")
    assert response.status_code == 302
    assert fake.count() == 1


# -- retries ------------------------------------------------------------------------------------
def test_retries_on_listed_statuses_then_succeeds(fake, make_upstream):
    make_upstream(retry_total=3)
    fake.script("/flaky", Reply(503), Reply(502), Reply(200, body={"ok": True}))
    response = upstream("api").get("/flaky")
    assert response.json() == {"ok": True}
    assert response.attempts == 3
    assert fake.count("/flaky") == 3
    [row] = logs()
    assert (row.outcome, row.status, row.attempts) == ("ok", 200, 3)
    assert [r["status"] for r in row.retries] == [503, 502]


def test_retries_exhausted_keeps_the_last_response(fake, make_upstream):
    make_upstream(retry_total=2)
    fake.script("/down", Reply(503, body="busy"))
    with pytest.raises(errors.RetriesExhausted) as caught:
        upstream("api").get("/down")
    assert caught.value.last_status == 503
    assert caught.value.response.text == "busy"
    assert fake.count("/down") == 3
    [row] = logs()
    assert (row.outcome, row.attempts) == ("http_error", 3)


def test_backoff_follows_the_policy(fake, make_upstream):
    make_upstream(retry_total=3, retry_backoff_factor=0.01, retry_backoff_max=1.0)
    fake.script("/slowly", Reply(503), Reply(503), Reply(503), Reply(200))
    upstream("api").get("/slowly")
    [row] = logs()
    # factor * 2^(n-1): 10 ms, 20 ms, 40 ms.
    assert [r["wait_s"] for r in row.retries] == [0.01, 0.02, 0.04]
    sent = [r.at for r in fake.requests]
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    assert all(gap >= wait for gap, wait in zip(gaps, [0.01, 0.02, 0.04], strict=True))


def test_post_is_not_retried_unless_the_policy_allows(fake, make_upstream):
    make_upstream(retry_total=3)
    fake.script("/create", Reply(503))
    with pytest.raises(errors.UpstreamHTTPError):
        upstream("api").post("/create", json={"a": 1})
    assert fake.count("/create") == 1


def test_retry_after_is_honoured_up_to_the_cap(fake, make_upstream):
    make_upstream(retry_total=1, retry_after_max=0.05)
    fake.script("/limited", Reply(429, retry_after="3"), Reply(200))
    started = time.monotonic()
    assert upstream("api").get("/limited").status_code == 200
    assert time.monotonic() - started < 1.0  # the 3 s ask was capped at 50 ms
    assert logs()[0].retries[0]["wait_s"] == 0.05


def test_deadline_holds_when_retry_after_asks_for_more(fake, make_upstream):
    make_upstream(retry_total=5, retry_after_max=60, deadline=0.3)
    fake.script("/wait", Reply(503, retry_after="2"))
    started = time.monotonic()
    with pytest.raises(errors.RetriesExhausted) as caught:  # the upstream's own answer, not a timeout
        upstream("api").get("/wait")
    assert time.monotonic() - started < 0.3 + 0.1  # scheduling slack on a busy machine
    assert caught.value.last_status == 503 and caught.value.retry_after == 2
    assert fake.count("/wait") == 1  # no point waiting 2 s to try again
    assert logs()[0].retries[0]["error"] == "retry_after_past_deadline"


def test_deadline_bounds_a_slow_upstream_across_retries(fake, make_upstream):
    make_upstream(retry_total=5, read_timeout=10, deadline=0.4)
    fake.script("/slow", Reply(200, delay=1.0))
    started = time.monotonic()
    with pytest.raises(errors.UpstreamTimeout):
        upstream("api").get("/slow")
    assert time.monotonic() - started < 0.4 + 0.1


def test_deadline_bounds_a_slow_body(fake, make_upstream):
    # The whole body takes 4 x 1 s; the deadline ends the read at 0.5 s (plus
    # scheduling slack on a busy box, far from the 4 s without a deadline).
    make_upstream(retry_total=0, read_timeout=10, deadline=0.5)
    fake.script("/drip", Reply(200, body=b"x" * 4000, body_delay=1.0))
    started = time.monotonic()
    with pytest.raises(errors.UpstreamTimeout):
        upstream("api").get("/drip")
    assert time.monotonic() - started < 0.5 + 1.0


def test_connection_reset_is_retried_then_reported(fake, make_upstream):
    make_upstream(retry_total=2)
    fake.script("/reset", Reply(reset=True))
    with pytest.raises(errors.RetriesExhausted) as caught:
        upstream("api").get("/reset")
    assert caught.value.last_error
    assert fake.count("/reset") == 3
    assert logs()[0].outcome == "connection_error"


def test_malformed_response_is_a_connection_error(fake, make_upstream):
    make_upstream(retry_total=0)
    fake.script("/garbage", Reply(malformed=True))
    with pytest.raises(errors.UpstreamConnectionError):
        upstream("api").get("/garbage")


def test_nothing_listening(make_upstream):
    from tests.support.redis_server import free_port

    make_upstream(base_url=f"http://127.0.0.1:{free_port()}", retry_total=1)
    with pytest.raises(errors.UpstreamConnectionError):  # refused: not worth a retry
        upstream("api").get("/x")


# -- circuit breaker -------------------------------------------------------------------------
def test_breaker_full_cycle_with_a_moved_clock(fake, make_upstream, breaker_clock):
    make_upstream(retry_total=0, breaker_fail_max=3, breaker_reset_timeout=30)
    client = upstream("api")
    fake.script("/x", Reply(500))
    for _ in range(3):
        with pytest.raises(errors.UpstreamHTTPError):
            client.get("/x")
    assert client.breaker.status()["state"] == "open"

    with pytest.raises(errors.BreakerOpen) as caught:
        client.get("/x")
    assert fake.count("/x") == 3  # answered without touching the network
    assert 29 < caught.value.retry_after <= 30

    breaker_clock.advance(31)
    fake.script("/x", Reply(500))
    with pytest.raises(errors.UpstreamHTTPError):
        client.get("/x")  # the half-open probe fails: open again
    assert client.breaker.status()["state"] == "open"

    breaker_clock.advance(31)
    fake.script("/x", Reply(200))
    assert client.get("/x").status_code == 200  # the probe succeeds: closed
    assert client.breaker.status()["state"] == "closed"
    assert client.get("/x").status_code == 200

    call_log_flush()  # transitions are recorded off the request path, with the call logs
    transitions = [(e.from_state, e.to_state) for e in BreakerEvent.objects.order_by("id")]
    assert transitions == [("closed", "open"), ("open", "half-open"), ("half-open", "open"),
                           ("open", "half-open"), ("half-open", "closed")]
    assert [r.outcome for r in logs()][3] == "breaker_open"


def test_client_errors_do_not_trip_the_breaker(fake, make_upstream):
    make_upstream(retry_total=0, breaker_fail_max=2)
    fake.script("/missing", Reply(404))
    for _ in range(5):
        with pytest.raises(errors.UpstreamHTTPError) as caught:
            upstream("api").get("/missing")
        assert caught.value.response.status_code == 404
    assert upstream("api").breaker.status()["state"] == "closed"
    response = upstream("api").get("/missing", raise_for_status=False)
    assert response.status_code == 404


def test_a_success_resets_the_consecutive_failure_count(fake, make_upstream):
    make_upstream(retry_total=0, breaker_fail_max=3)
    for _ in range(3):
        fake.script("/x", Reply(500))
        for _ in range(2):
            with pytest.raises(errors.UpstreamHTTPError):
                upstream("api").get("/x")
        fake.script("/x", Reply(200))
        upstream("api").get("/x")
    assert upstream("api").breaker.status()["state"] == "closed"


@pytest.mark.django_db(transaction=True)
def test_half_open_admits_only_the_configured_probes(fake, make_upstream, breaker_clock):
    make_upstream(retry_total=0, breaker_fail_max=1, breaker_half_open_max=2)
    client = upstream("api")
    fake.script("/x", Reply(500))
    with pytest.raises(errors.UpstreamHTTPError):
        client.get("/x")
    breaker_clock.advance(31)
    fake.script("/x", Reply(200, delay=0.3))
    results: list[object] = []

    def call() -> None:
        try:
            results.append(client.get("/x").status_code)
        except errors.BreakerOpen as err:
            results.append(err)

    threads = [threading.Thread(target=call) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(200) == 2
    assert sum(isinstance(r, errors.BreakerOpen) for r in results) == 4


def test_concurrent_calls_are_not_serialised_by_the_breaker(fake, make_upstream):
    make_upstream(pool_size=10)
    fake.script("/slow", Reply(200, delay=0.2))
    client = upstream("api")
    threads = [threading.Thread(target=client.get, args=("/slow",), kwargs={"cache": False})
               for _ in range(10)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fake.max_concurrent == 10
    assert time.monotonic() - started < 1.0  # one 200 ms wave, not ten (2 s)


def test_breaker_state_survives_a_policy_change(fake, make_upstream, settings,
                                                django_capture_on_commit_callbacks):
    settings.RESILIENCE = {**settings.RESILIENCE, "POLICY_CHECK_INTERVAL": 0}
    row = make_upstream(retry_total=0, breaker_fail_max=2)
    fake.script("/x", Reply(500))
    for _ in range(2):
        with pytest.raises(errors.UpstreamHTTPError):
            upstream("api").get("/x")
    with django_capture_on_commit_callbacks(execute=True):
        row.read_timeout = 3.0
        row.save()
    with pytest.raises(errors.BreakerOpen):
        upstream("api").get("/x")
    assert upstream("api").policy.read_timeout == 3.0


# -- live policy ----------------------------------------------------------------------------------
def test_policy_change_applies_without_restart(fake, make_upstream, settings,
                                               django_capture_on_commit_callbacks):
    settings.RESILIENCE = {**settings.RESILIENCE, "POLICY_CHECK_INTERVAL": 0}
    row = make_upstream(default_headers={"X-Version": "1"})
    upstream("api").get("/a")
    with django_capture_on_commit_callbacks(execute=True):
        row.default_headers = {"X-Version": "2"}
        row.save()
    upstream("api").get("/b")
    assert [r.headers["X-Version"] for r in fake.requests] == ["1", "2"]


# -- response cache -------------------------------------------------------------------------
def test_response_cache_hit_and_bypass(fake, make_upstream):
    make_upstream(cache_ttl=60)
    first = upstream("api").get("/things", params={"a": "1", "b": "2"})
    second = upstream("api").get("/things", params={"b": "2", "a": "1"})  # same request, reordered
    assert (first.from_cache, second.from_cache) == (False, True)
    assert second.json() == first.json()
    assert fake.count("/things") == 1
    upstream("api").get("/things", params={"a": "1", "b": "2"}, cache=False)
    assert fake.count("/things") == 2
    upstream("api").post("/things", json={})  # POST is not cached
    upstream("api").post("/things", json={})
    assert fake.count("/things") == 4
    outcomes = [r.outcome for r in logs()]
    assert outcomes == ["ok", "cache_hit", "ok", "ok", "ok"]


def test_varying_headers_are_part_of_the_key(fake, make_upstream):
    make_upstream(cache_ttl=60, cache_vary_headers=["Accept-Language"])
    upstream("api").get("/t", headers={"Accept-Language": "en"})
    upstream("api").get("/t", headers={"Accept-Language": "zh"})
    assert upstream("api").get("/t", headers={"Accept-Language": "en"}).from_cache
    assert fake.count("/t") == 2


def test_errors_are_not_cached(fake, make_upstream):
    make_upstream(cache_ttl=60, retry_total=0)
    fake.script("/e", Reply(404), Reply(200))
    with pytest.raises(errors.UpstreamHTTPError):
        upstream("api").get("/e")
    assert not upstream("api").get("/e").from_cache


def test_serve_stale_on_error_and_on_open_breaker(fake, make_upstream, monkeypatch, breaker_clock):
    make_upstream(cache_ttl=10, cache_serve_stale=True, retry_total=0, breaker_fail_max=2)
    fake.script("/s", Reply(200, body={"v": 1}), Reply(500))
    assert upstream("api").get("/s").json() == {"v": 1}
    later = time.time() + 11
    monkeypatch.setattr("resilience.client.responses.wall_clock", lambda: later)
    stale = upstream("api").get("/s")  # expired; upstream answers 500
    assert (stale.json(), stale.stale, stale.from_cache) == ({"v": 1}, True, True)
    upstream("api").get("/s")  # second failure opens the breaker
    assert upstream("api").breaker.status()["state"] == "open"
    assert upstream("api").get("/s").stale  # breaker open: still served stale
    assert fake.count("/s") == 3
    assert [r.outcome for r in logs()] == ["ok", "stale", "stale", "stale"]


# -- single-flight ------------------------------------------------------------------------------
def test_concurrent_identical_calls_share_one_request(fake, make_upstream):
    make_upstream(cache_ttl=60)
    fake.script("/popular", Reply(200, body={"n": 1}, delay=0.2))
    client = upstream("api")
    results: list[requests.Response] = []
    threads = [threading.Thread(target=lambda: results.append(client.get("/popular")))
               for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fake.count("/popular") == 1
    assert [r.json() for r in results] == [{"n": 1}] * 10
    assert sorted(r.outcome for r in logs()) == ["ok"] + ["shared"] * 9


def test_followers_get_the_leaders_failure(fake, make_upstream):
    make_upstream(cache_ttl=60, retry_total=0)
    fake.script("/bad", Reply(500, delay=0.2))
    client = upstream("api")
    caught: list[BaseException] = []

    def call() -> None:
        try:
            client.get("/bad")
        except errors.UpstreamError as err:
            caught.append(err)

    threads = [threading.Thread(target=call) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fake.count("/bad") == 1
    assert len(caught) == 5 and all(isinstance(e, errors.UpstreamHTTPError) for e in caught)


# -- credentials and call logs ---------------------------------------------------------------
def test_credentials_come_from_the_environment_and_never_reach_logs(fake, make_upstream, monkeypatch):
    monkeypatch.setenv("UPSTREAM_TEST_TOKEN", "s3cr3t-value")
    make_upstream(auth_kind="query", auth_env_var="UPSTREAM_TEST_TOKEN", auth_name="api_key", cache_ttl=60)
    upstream("api").get("/q", params={"token": "caller-secret", "page": "2"})
    recorded = fake.requests[0]
    assert recorded.params["api_key"] == "s3cr3t-value"
    [row] = logs()
    assert "s3cr3t" not in str(row.__dict__) and "caller-secret" not in row.path
    assert row.path == "/q?token=REDACTED&page=2"


def test_bearer_token_header(fake, make_upstream, monkeypatch):
    monkeypatch.setenv("UPSTREAM_TEST_TOKEN", "tok")
    make_upstream(auth_kind="bearer", auth_env_var="UPSTREAM_TEST_TOKEN")
    upstream("api").get("/b")
    assert fake.requests[0].headers["Authorization"] == "Bearer tok"


def test_missing_secret_is_a_clear_error(fake, make_upstream, monkeypatch):
    monkeypatch.delenv("UPSTREAM_TEST_TOKEN", raising=False)
    make_upstream(auth_kind="bearer", auth_env_var="UPSTREAM_TEST_TOKEN")
    with pytest.raises(errors.UpstreamError, match="UPSTREAM_TEST_TOKEN"):
        upstream("api").get("/b")
    assert fake.count() == 0


def test_call_logs_are_complete_after_a_burst(fake, make_upstream):
    make_upstream(retry_total=0, pool_size=20, breaker_fail_max=100)
    fake.script("/fail", Reply(500))
    client = upstream("api")
    barrier = threading.Barrier(20)

    def call(i: int) -> None:
        token = current_request_id.set(f"req-{i}")
        barrier.wait()
        try:
            client.get("/fail" if i % 5 == 0 else f"/ok/{i}")
        except errors.UpstreamError:
            pass
        finally:
            current_request_id.reset(token)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = logs()
    assert len(rows) == 20
    assert sorted(r.request_id for r in rows) == sorted(f"req-{i}" for i in range(20))
    assert sum(r.outcome == "http_error" for r in rows) == 4
    assert all(r.latency_ms > 0 and r.upstream == "api" for r in rows)


def test_connections_are_pooled(fake, make_upstream):
    make_upstream()
    for i in range(10):
        upstream("api").get(f"/p/{i}")
    assert fake.connections == 1


def test_reset_clients_rebuilds_from_the_database(fake, make_upstream):
    make_upstream()
    first = upstream("api")
    reset_clients()
    assert upstream("api") is not first
    Upstream.objects.filter(name="api").delete()
    reset_clients()
    with pytest.raises(errors.UnknownUpstream):
        upstream("api")


# -- the near cache in front of Redis ---------------------------------------------------------------
def test_hot_entries_skip_the_redis_round_trip(fake, make_upstream, on_redis, monkeypatch):
    from django.core.cache import cache

    make_upstream(cache_ttl=60)
    upstream("api").get("/hot")
    assert upstream("api").get("/hot").from_cache
    before = cache.stats(namespace="http")["hits"]
    for _ in range(5):
        assert upstream("api").get("/hot").from_cache
    assert cache.stats(namespace="http")["hits"] == before  # served in process

    # Another process's clear is seen once the near copy ages out (1 s by default).
    cache.delete_pattern("http:*")
    assert upstream("api").get("/hot").from_cache
    later = time.monotonic() + 1.01
    monkeypatch.setattr(NearCache, "clock", staticmethod(lambda: later))
    assert not upstream("api").get("/hot").from_cache
    assert fake.count("/hot") == 2


def test_clears_in_this_process_reach_the_near_cache_at_once(fake, make_upstream, on_redis):
    from resilience.cache.ops import cache_clear
    from resilience.ops.services import upstream_cache_clear

    make_upstream(cache_ttl=60)
    upstream("api").get("/hot")
    assert upstream("api").get("/hot").from_cache
    assert upstream_cache_clear(name="api") == 1
    assert not upstream("api").get("/hot").from_cache
    cache_clear(namespaces=["http"])
    assert not upstream("api").get("/hot").from_cache
    assert fake.count("/hot") == 3


def test_the_near_cache_never_outlives_the_ttl(fake, make_upstream, on_redis, monkeypatch):
    make_upstream(cache_ttl=1)
    upstream("api").get("/short")
    assert upstream("api").get("/short").from_cache
    later = time.time() + 1.5
    monkeypatch.setattr("resilience.client.responses.wall_clock", lambda: later)
    assert not upstream("api").get("/short").from_cache
