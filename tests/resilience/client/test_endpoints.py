"""Endpoint pools: strategies, per-endpoint breakers, failover inside one
call, Retry-After cooldowns, streams, and what the call log says. Real
loopback servers that fail on purpose; clocks are moved, not waited for."""
from __future__ import annotations

import asyncio
import json
import random
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from resilience import exceptions, upstream
from resilience.cache import default_cache
from resilience.client import reset_clients
from resilience.client.endpoints import Pool, cooldown_key, pool_specs, snapshot
from resilience.client.policy import Policy
from resilience.models import CallLog, Endpoint, Upstream
from resilience.telemetry.calllog import call_log_flush
from resilience.telemetry.selectors import breaker_status
from tests.resilience.conftest import Clock
from tests.support.fake_upstream import Reply
from tests.support.roles import role_user


@pytest.fixture(autouse=True)
def _seeded(monkeypatch):
    monkeypatch.setattr(Pool, "random", random.Random(7))


@pytest.fixture
def pool_clock(monkeypatch):
    clock = Clock(start=2_000_000_000.0)
    monkeypatch.setattr(Pool, "clock", staticmethod(clock))
    return clock


@pytest.fixture
def make_pool(make_upstream):
    def make(servers, *, weights=None, name="pool", endpoint_fields=None, **fields) -> Upstream:
        row = make_upstream(name, **fields)
        for i, server in enumerate(servers):
            Endpoint.objects.create(upstream=row, name=f"e{i}", base_url=server.url,
                                    weight=(weights or [1] * len(servers))[i], priority=i,
                                    **(endpoint_fields or {}).get(i, {}))
        reset_clients()
        return row

    return make


def served(servers, path="/item"):
    return [server.count(path) for server in servers]


def test_weighted_random_shares_calls_by_weight(fakes, make_pool):
    make_pool(fakes, weights=[6, 3, 1])
    for _ in range(200):
        assert upstream("pool").get("/item").status_code == 200
    counts = served(fakes)
    assert sum(counts) == 200
    assert counts[0] > counts[1] > counts[2] > 0
    assert 0.45 < counts[0] / 200 < 0.75


def test_priority_sends_to_the_primary_and_fails_over_to_the_next(fakes, make_pool):
    make_pool(fakes, endpoint_strategy="priority")
    for _ in range(5):
        upstream("pool").get("/item")
    assert served(fakes) == [5, 0, 0]
    fakes[0].script("/item", Reply(503))
    response = upstream("pool").get("/item")
    # The primary is retried once (a 5xx may be a blip), then the fallback answers.
    assert response.status_code == 200 and response.attempts == 3
    assert served(fakes) == [7, 1, 0]
    call_log_flush()
    log = CallLog.objects.order_by("-created_at", "-id").first()
    assert log.endpoint == "e1"
    assert [(r["endpoint"], r["status"]) for r in log.retries] == [("e0", 503), ("e0", 503)]


def test_one_endpoint_killed_mid_traffic_reaches_no_caller(fakes, make_pool):
    make_pool(fakes)
    errors_seen = []
    for i in range(60):
        if i == 15:
            fakes[1].stop()
        try:
            upstream("pool").get("/item")
        except exceptions.UpstreamError as err:
            errors_seen.append(err)
    assert errors_seen == []
    # Its breaker opened (3 failures): later calls no longer try it.
    client = upstream("pool")
    killed = next(m for m in client._live.current().pool.members if m.name == "e1")
    assert killed.breaker.status()["state"] == "open"
    call_log_flush()
    failed_over = [log for log in CallLog.objects.all() if log.retries]
    assert len(failed_over) == 3  # one per failure the breaker counted, then never again
    assert all(r["endpoint"] == "e1" and r["error"] for log in failed_over for r in log.retries)
    assert all(log.status == 200 and log.endpoint in ("e0", "e2") for log in failed_over)


def test_a_slow_endpoint_gets_under_a_tenth_of_calls_with_the_score_strategy(fakes, make_pool):
    make_pool(fakes, endpoint_strategy="score")
    fakes[2].script("/item", Reply(200, body={"slow": True}, delay=0.5))
    for _ in range(60):
        upstream("pool").get("/item")
    counts = served(fakes)
    assert sum(counts) == 60
    assert counts[2] / 60 < 0.10
    assert counts[0] > 15 and counts[1] > 15  # the fast ones still share the rest


def test_weighted_random_would_not_have_avoided_the_slow_endpoint(fakes, make_pool):
    # The baseline for the test above: the same traffic without the score strategy.
    make_pool(fakes)
    fakes[2].script("/item", Reply(200, body={"slow": True}, delay=0.05))
    for _ in range(60):
        upstream("pool").get("/item")
    assert served(fakes)[2] / 60 > 0.2


def test_retry_after_cools_the_endpoint_for_the_time_asked(fakes, make_pool, pool_clock):
    make_pool(fakes, retry_after_max=30)
    fakes[0].script("/item", Reply(429, retry_after="2"), Reply(200, body={"ok": True}))
    while fakes[0].count("/item") == 0:
        assert upstream("pool").get("/item").status_code == 200  # the 429 failed over
    for _ in range(30):
        assert upstream("pool").get("/item").status_code == 200
    assert fakes[0].count("/item") == 1  # nothing while cooling
    pool_clock.advance(1.9)
    for _ in range(20):
        upstream("pool").get("/item")
    assert fakes[0].count("/item") == 1
    pool_clock.advance(0.2)
    for _ in range(30):
        upstream("pool").get("/item")
    assert fakes[0].count("/item") > 1  # back in rotation


def test_the_cooldown_is_capped_by_the_policy(fakes, make_pool, pool_clock):
    make_pool(fakes[:2], retry_after_max=1)
    fakes[0].script("/item", Reply(503, retry_after="120"), Reply(200))
    while fakes[0].count("/item") == 0:
        upstream("pool").get("/item")
    pool_clock.advance(1.1)
    for _ in range(30):
        upstream("pool").get("/item")
    assert fakes[0].count("/item") > 1


def test_a_cooldown_read_under_way_holds_the_choices_of_the_other_threads(fakes, make_pool, monkeypatch):
    """Attempts choose on several threads at once (the async client's steps
    run on a thread pool): one whose read of the shared cooldowns is stale
    waits for a read already under way instead of choosing from old memory."""
    row = make_pool(fakes[:2], endpoint_strategy="priority")
    pool = Pool(Policy.from_model(row), pool_specs(row), lambda name: None)
    store = default_cache()
    store.set(cooldown_key("pool", "e0"), Pool.clock() + 30, timeout=30)  # cooled by another worker
    reading, release = threading.Event(), threading.Event()
    get_many = store.get_many

    def slow_read(keys, *args, **kwargs):
        reading.set()
        release.wait(5)
        return get_many(keys, *args, **kwargs)

    monkeypatch.setattr(store, "get_many", slow_read)
    with ThreadPoolExecutor(2) as threads:
        first = threads.submit(pool.choose)
        assert reading.wait(5)
        second = threads.submit(pool.choose)
        with pytest.raises(TimeoutError):
            second.result(timeout=0.2)  # waiting for the read, not choosing e0 from memory
        release.set()
        assert [first.result(5).member.name, second.result(5).member.name] == ["e1", "e1"]


def test_every_endpoint_open_answers_breaker_open_with_the_earliest_retry_after(
        fakes, make_pool, breaker_clock):
    make_pool(fakes, breaker_fail_max=1, breaker_reset_timeout=10, retry_total=0)
    for server in fakes:
        server.script("/item", Reply(500))
    for _ in range(3):
        with pytest.raises(exceptions.UpstreamError):
            upstream("pool").get("/item")
        breaker_clock.advance(2)  # the endpoints open 2 s apart
    opened = [s.count("/item") for s in fakes]
    assert opened == [1, 1, 1]
    with pytest.raises(exceptions.BreakerOpen) as caught:
        upstream("pool").get("/item")
    assert caught.value.status == 503
    assert caught.value.retry_after == pytest.approx(10 - 6, abs=0.01)  # the first opened is back first
    assert "every endpoint" in caught.value.message
    row = Upstream.objects.get(name="pool")
    assert snapshot(row)["state"] == "open"
    # The lists (API, admin, dashboard) show the upstream's view too, not a breaker nobody uses.
    status = breaker_status(row)
    assert status["state"] == "open" and status["endpoints_open"] == "3/3"
    assert status["retry_after"] == pytest.approx(10 - 6, abs=0.01)


def test_an_ejection_limit_keeps_the_endpoint_back_soonest_in_rotation(fakes, make_pool, breaker_clock):
    make_pool(fakes, breaker_fail_max=1, breaker_reset_timeout=10, retry_total=0, max_ejection_percent=50)
    for server in fakes:
        server.script("/item", Reply(500))
    for _ in range(3):
        with pytest.raises(exceptions.UpstreamError):
            upstream("pool").get("/item")
        breaker_clock.advance(2)
    fakes[0].script("/item", Reply(200, body={"back": True}))
    # Every breaker is open, but more than half may not be out: the soonest back is used anyway.
    response = upstream("pool").get("/item")
    assert response.json() == {"back": True}


def test_least_in_flight_avoids_the_endpoint_holding_a_stream(fakes, make_pool):
    make_pool(fakes[:2], endpoint_strategy="least_in_flight")
    held = upstream("pool").get("/item", stream=True, cache=False)
    busy = 0 if fakes[0].count("/item") else 1
    for _ in range(6):
        upstream("pool").get("/item")
    assert fakes[1 - busy].count("/item") == 6 and fakes[busy].count("/item") == 1
    held.close()
    for _ in range(10):
        upstream("pool").get("/item")
    assert fakes[busy].count("/item") > 1


def test_a_model_override_rewrites_the_json_body_for_that_endpoint(fakes, make_pool):
    make_pool(fakes[:2], endpoint_strategy="priority", retry_methods=["POST"],
              endpoint_fields={1: {"model": "fallback-model"}})
    fakes[0].script("/chat", Reply(502))
    upstream("pool").post("/chat", json={"model": "gpt-x", "messages": []})
    assert fakes[0].requests[-1].json()["model"] == "gpt-x"
    assert fakes[1].requests[-1].json() == {"model": "fallback-model", "messages": []}
    upstream("pool").post("/chat", data=json.dumps({"model": "gpt-x"}).encode(),
                          headers={"Content-Type": "application/json"})
    assert fakes[1].requests[-1].json() == {"model": "fallback-model"}


def test_a_post_is_not_repeated_elsewhere_unless_the_policy_retries_posts(fakes, make_pool):
    make_pool(fakes[:2], endpoint_strategy="priority")  # POST is not in the default retry methods
    fakes[0].script("/chat", Reply(502))
    with pytest.raises(exceptions.UpstreamHTTPError):
        upstream("pool").post("/chat", json={})
    assert served(fakes[:2], "/chat") == [1, 0]


def test_each_endpoint_sends_its_own_credential(fakes, make_pool, settings):
    settings.RESILIENCE = {**settings.RESILIENCE,
                           "SECRETS": {"UPSTREAM_KEY_A": "secret-a", "UPSTREAM_KEY_B": "secret-b"}}
    make_pool(fakes[:2], endpoint_strategy="priority", auth_kind="bearer", auth_env_var="UPSTREAM_KEY_A",
              endpoint_fields={1: {"auth_env_var": "UPSTREAM_KEY_B"}})
    fakes[0].script("/item", Reply(503))
    upstream("pool").get("/item")
    assert fakes[0].requests[-1].headers["Authorization"] == "Bearer secret-a"
    assert fakes[1].requests[-1].headers["Authorization"] == "Bearer secret-b"
    call_log_flush()
    stored = json.dumps(list(CallLog.objects.values()), default=str)
    assert "secret-a" not in stored and "secret-b" not in stored


def test_a_stream_fails_over_before_its_first_byte(fakes, make_pool):
    make_pool(fakes[:2], endpoint_strategy="priority")
    fakes[0].script("/events", Reply(503))
    fakes[1].script("/events", Reply(200, chunks=(b"data: one\n\n", b"data: two\n\n")))
    response = upstream("pool").get("/events", stream=True)
    assert b"".join(response.iter_content(None)) == b"data: one\n\ndata: two\n\n"
    response.close()
    assert response.attempts == 3 and response.endpoint == "e1"  # the primary twice, then the fallback


def test_the_async_face_fails_over_the_same_way(fakes, make_pool):
    make_pool(fakes, endpoint_strategy="priority", retry_total=3)
    fakes[0].stop()
    fakes[1].script("/item", Reply(502))

    client = upstream("pool")  # loaded here: the database is this thread's

    async def calls():
        return [await client.aget("/item") for _ in range(3)]

    responses = asyncio.run(calls())
    assert [r.status_code for r in responses] == [200, 200, 200]
    call_log_flush()
    first = CallLog.objects.order_by("created_at", "id").first()
    # Refused: moved at once; 502: retried once on its endpoint, then moved.
    assert [r["endpoint"] for r in first.retries] == ["e0", "e1", "e1"] and first.endpoint == "e2"


def test_an_endpoint_change_reaches_the_client(fakes, make_pool, settings,
                                              django_capture_on_commit_callbacks):
    settings.RESILIENCE = {**settings.RESILIENCE, "POLICY_CHECK_INTERVAL": 0}
    row = make_pool(fakes[:1])
    upstream("pool").get("/item")
    with django_capture_on_commit_callbacks(execute=True):  # the version bump follows the commit
        Endpoint.objects.create(upstream=row, name="extra", base_url=fakes[2].url, weight=1000)
    for _ in range(5):
        upstream("pool").get("/item")
    assert fakes[2].count("/item") >= 4


def test_rollups_and_the_snapshot_count_each_endpoint(fakes, make_pool):
    make_pool(fakes[:2], endpoint_strategy="priority")
    fakes[0].script("/item", Reply(200), Reply(200), Reply(503))
    for _ in range(4):
        upstream("pool").get("/item")
    call_log_flush()
    view = snapshot(Upstream.objects.get(name="pool"))
    by_name = {e["name"]: e for e in view["endpoints"]}
    assert view["strategy"] == "priority" and view["state"] == "closed"
    assert by_name["e0"]["calls"] == 2 and by_name["e1"]["calls"] == 2  # the last attempt's endpoint counts
    assert by_name["e0"]["weight"] == 1 and by_name["e1"]["p95_ms"] is not None
    assert Counter(CallLog.objects.values_list("endpoint", flat=True)) == {"e0": 2, "e1": 2}


def test_a_single_url_upstream_is_the_one_endpoint_case(make_upstream, fake):
    make_upstream("plain")
    upstream("plain").get("/x")
    call_log_flush()
    assert CallLog.objects.get().endpoint == ""
    view = snapshot(Upstream.objects.get(name="plain"))
    assert [e["name"] for e in view["endpoints"]] == [""] and view["endpoints"][0]["base_url"] == fake.url


def test_the_api_and_the_command_show_each_endpoint(fakes, make_pool):
    from io import StringIO

    from django.core.management import call_command
    from rest_framework.test import APIClient

    make_pool(fakes[:2], endpoint_strategy="priority", auth_kind="bearer", auth_env_var="UPSTREAM_POOL_KEY")
    client = APIClient()
    client.force_authenticate(role_user("viewer"))  # reading policies needs view_upstream
    body = client.get("/api/resilience/upstreams/pool").json()
    pool = body["pool"]
    assert pool["strategy"] == "priority"
    assert [(e["name"], e["state"], e["auth_env_var"]) for e in pool["endpoints"]] == [
        ("e0", "closed", "UPSTREAM_POOL_KEY"), ("e1", "closed", "UPSTREAM_POOL_KEY")]
    out = StringIO()
    call_command("upstreams", stdout=out)
    assert "pool/e0" in out.getvalue() and "pool/e1" in out.getvalue()


def test_endpoints_are_edited_inline_with_history(fakes, make_pool, client, django_user_model):
    from django.urls import reverse

    row = make_pool(fakes[:1])
    staff = django_user_model.objects.create_user("root", password="pw", is_staff=True, is_superuser=True)
    client.force_login(staff)
    page = client.get(reverse("admin:resilience_upstream_change", args=[row.pk]))
    assert page.status_code == 200 and "Endpoint pool" in page.content.decode()
    assert any(inline.formset.model is Endpoint for inline in page.context["inline_admin_formsets"])
    endpoint = Endpoint.objects.get(upstream=row)
    endpoint.weight = 5
    endpoint.save()
    assert [h.weight for h in endpoint.history.all()] == [5, 1]


def test_an_endpoint_breaker_trip_is_recorded_for_its_upstream(fakes, make_pool):
    from resilience.models import BreakerEvent

    make_pool(fakes[:2], endpoint_strategy="priority", breaker_fail_max=1)
    fakes[0].script("/item", Reply(503))
    upstream("pool").get("/item")
    call_log_flush()
    event = BreakerEvent.objects.get()
    assert (event.upstream, event.to_state) == ("pool", "open")
    assert event.reason.startswith("endpoint e0: ")


def test_a_single_url_upstream_is_not_cooled_down_by_retry_after(make_upstream, fake):
    make_upstream("plain", retry_total=0, retry_after_max=30, breaker_enabled=False)
    fake.script("/x", Reply(429, retry_after="5"), Reply(200))
    with pytest.raises(exceptions.UpstreamError) as caught:
        upstream("plain").get("/x")
    assert caught.value.response.status_code == 429
    assert upstream("plain").get("/x").status_code == 200


def test_with_every_other_endpoint_open_retries_stay_on_the_last_one(fakes, make_pool):
    make_pool(fakes[:2], endpoint_strategy="priority", breaker_fail_max=1, retry_total=3)
    fakes[0].script("/item", Reply(503))
    fakes[1].script("/item", Reply(502), Reply(200, body={"fourth": True}))
    response = upstream("pool").get("/item")  # e0 503 twice (opens), e1 502, then e1 again: 200
    assert response.json() == {"fourth": True} and response.attempts == 4
    assert served(fakes[:2]) == [2, 2]


def test_metrics_count_calls_and_breaker_state_per_endpoint(fakes, make_pool):
    from prometheus_client import REGISTRY

    from resilience.telemetry.metrics import BreakerCollector

    make_pool(fakes[:2], endpoint_strategy="priority", breaker_fail_max=1)
    before = REGISTRY.get_sample_value("resilience_endpoint_calls_total",
                                       {"upstream": "pool", "endpoint": "e1", "outcome": "ok"}) or 0
    fakes[0].script("/item", Reply(503))
    upstream("pool").get("/item")
    after = REGISTRY.get_sample_value("resilience_endpoint_calls_total",
                                      {"upstream": "pool", "endpoint": "e1", "outcome": "ok"})
    assert after == before + 1
    gauges = {tuple(sample.labels.values()): sample.value for metric in BreakerCollector().collect()
              if metric.name == "resilience_endpoint_breaker_state" for sample in metric.samples}
    assert gauges == {("pool", "e0"): 2, ("pool", "e1"): 0}


def test_the_score_window_is_shared_through_redis(on_redis):
    from resilience.client.endpoints import Window, score_of

    here, there = Window("shared"), Window("shared")  # as two processes hold them
    for _ in range(10):
        here.add("slow", True, 500.0)
        here.add("fast", True, 5.0)
    here.add("fast", False, 5.0)
    here.sync()
    there.sync()
    seen = there.totals()
    assert seen["slow"] == [10, 10, 5000.0] and seen["fast"] == [11, 10, 55.0]
    assert score_of(seen["slow"]) == pytest.approx(0.95)
    assert score_of(seen["fast"]) == pytest.approx(10 / 11 * (1 - 5 / 10000))


def test_without_redis_the_score_window_is_per_process(settings):
    from resilience.cache import reset_engines
    from resilience.client.endpoints import Window

    settings.CACHES = {"default": {"BACKEND": "resilience.cache.FallbackCache", "LOCATION": "",
                                   "KEY_PREFIX": "rsltest-pools"}}
    reset_engines()

    here, there = Window("local"), Window("local")
    here.add("e0", True, 5.0)
    here.sync()
    there.sync()
    assert here.totals()["e0"] == [1, 1, 5.0] and there.totals() == {}


def test_an_endpoint_key_replaces_the_callers_authorization(fakes, make_pool, settings):
    settings.RESILIENCE = {**settings.RESILIENCE,
                           "SECRETS": {"UPSTREAM_KEY_A": "secret-a", "UPSTREAM_KEY_B": "secret-b"}}
    make_pool(fakes[:2], endpoint_strategy="priority", auth_kind="bearer", auth_env_var="UPSTREAM_KEY_A",
              endpoint_fields={1: {"auth_env_var": "UPSTREAM_KEY_B"}})
    fakes[0].script("/item", Reply(503))
    client = upstream("pool")
    client.get("/item", headers={"Authorization": "Bearer from-the-caller"})
    assert fakes[1].requests[-1].headers["Authorization"] == "Bearer secret-b"

    async def call():
        return await client.aget("/item", headers={"Authorization": "Bearer from-the-caller"})

    asyncio.run(call())
    assert fakes[1].requests[-1].headers["Authorization"] == "Bearer secret-b"
