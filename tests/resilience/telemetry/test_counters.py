"""The advisor's counters, from real calls through the client to a loopback
upstream that misbehaves on purpose, as the call-log writer folds them into
the rollups' `signals`."""
from __future__ import annotations

import threading

import pytest

from resilience import exceptions as errors
from resilience import upstream
from resilience.models import MinuteRollup
from resilience.telemetry.calllog import call_log_flush
from resilience.telemetry.counters import RefetchTracker, refetch_tracker
from tests.support.fake_upstream import Reply

pytestmark = pytest.mark.django_db(transaction=True)


def signals(name: str = "live") -> dict[str, int]:
    call_log_flush()
    total: dict[str, int] = {}
    for row in MinuteRollup.objects.filter(upstream=name).values_list("signals", flat=True):
        for key, count in row.items():
            total[key] = total.get(key, 0) + count
    return total


@pytest.fixture(autouse=True)
def _fresh_tracker():
    refetch_tracker().clear()
    yield
    refetch_tracker().clear()


def test_retries_that_recover_and_retries_that_do_not(fake, live_upstream):
    live_upstream()
    fake.script("/flaky", Reply(503), Reply(200, body="ok"))
    fake.script("/down", Reply(503))
    upstream("live").get("/flaky")
    with pytest.raises(errors.UpstreamError):
        upstream("live").get("/down")
    found = signals()
    assert (found["retried"], found["retried_ok"]) == (2, 1)


def test_429s_are_counted_per_attempt(fake, live_upstream):
    live_upstream()
    fake.script("/limited", Reply(429, retry_after="0"))
    with pytest.raises(errors.UpstreamError):
        upstream("live").get("/limited")
    assert signals()["throttled"] == 3  # the first attempt and two retries


def test_repeated_cacheable_fetches_with_caching_off(fake, live_upstream):
    live_upstream(cache_ttl=0)
    client = upstream("live")
    for _ in range(3):
        client.get("/same", params={"q": "1"})
    client.get("/other")
    client.post("/same", json={"a": 1})  # not a cacheable method
    found = signals()
    assert (found["cacheable"], found["refetch"]) == (4, 2)
    assert found["refetch_gap_s"] >= 0


def test_bulkhead_rejections_are_told_from_pool_rejections(fake, live_upstream):
    live_upstream(bulkhead_max=1, bulkhead_wait=0.0)
    fake.script("/slow", Reply(200, body="ok", delay=0.3))
    client = upstream("live")
    started = threading.Event()
    done = []

    def slow() -> None:
        started.set()
        done.append(client.get("/slow").status_code)

    thread = threading.Thread(target=slow)
    thread.start()
    started.wait()
    while fake.count("/slow") == 0:
        threading.Event().wait(0.005)
    with pytest.raises(errors.BulkheadFull):
        client.get("/other")
    thread.join()
    found = signals()
    assert found["rejected_bulkhead"] == 1 and "rejected_pool" not in found
    assert done == [200]


def test_the_tracker_is_bounded():
    tracker = RefetchTracker(max_keys=2)
    assert tracker.see("a", 0) is None
    tracker.see("b", 1)
    tracker.see("c", 2)  # "a" is dropped
    assert tracker.see("a", 3) is None
    assert tracker.see("c", 5) == 3
    assert tracker.see("c", 5 + 3601) is None  # outside the window


def test_a_429_that_is_not_retried_counts_once(fake, live_upstream):
    live_upstream(retry_statuses=[503])
    fake.script("/limited", Reply(429))  # no Retry-After and not in retry_statuses: one attempt
    with pytest.raises(errors.UpstreamError):
        upstream("live").get("/limited")
    found = signals()
    assert found["throttled"] == 1 and "retried" not in found
