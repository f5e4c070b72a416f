"""Past the limits: more concurrent calls than pooled connections, and the
bulkhead's cap, against a real HTTP server on loopback (functional, not timed)."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from asgiref.sync import async_to_sync

from resilience import exceptions as errors
from resilience import upstream
from resilience.models import CallLog
from resilience.telemetry.calllog import call_log_flush
from tests.support.fake_upstream import Reply

# Worker threads read policies and write call logs: they need committed rows.
pytestmark = pytest.mark.usefixtures("transactional_db")


def test_more_threads_than_pool_connections_all_succeed(fake, make_upstream):
    """The old failure: past pool_size, discarded connections broke the body
    read (EBADF) and tripped the breaker."""
    make_upstream(pool_size=4, breaker_fail_max=3, retry_total=0, connect_timeout=2.0)
    fake.script("/item", Reply(200, body={"ok": True}, delay=0.005))
    client = upstream("api")

    def call(i: int) -> int:
        return client.get(f"/item?i={i}").status_code

    with ThreadPoolExecutor(max_workers=32) as pool:
        statuses = list(pool.map(call, range(800)))
    assert statuses == [200] * 800
    assert client.breaker.status()["state"] == "closed"
    assert fake.connections <= 4  # the pool never opened more than its size
    call_log_flush()
    assert CallLog.objects.exclude(outcome="ok").count() == 0


def test_async_tasks_beyond_the_pool_all_succeed(fake, make_upstream):
    # A connect timeout a busy CI box cannot miss: the point is the pool, not the clock.
    make_upstream(pool_size=4, retry_total=0, connect_timeout=2.0)
    fake.script("/item", Reply(200, body={"ok": True}, delay=0.01))
    client = upstream("api")

    async def burst() -> list[int]:
        import asyncio

        responses = await asyncio.gather(*(client.aget(f"/item?i={i}") for i in range(200)))
        return [r.status_code for r in responses]

    assert async_to_sync(burst)() == [200] * 200
    assert client.breaker.status()["state"] == "closed"
    assert fake.max_concurrent <= 4


def test_a_pool_wait_past_the_deadline_is_local_and_spares_the_breaker(fake, make_upstream):
    make_upstream(pool_size=1, connect_timeout=0.5, deadline=0.5, breaker_fail_max=1, retry_total=0)
    fake.script("/x", Reply(200, body={"ok": True}))
    client = upstream("api")
    held = client.get("/x", stream=True)  # unread: its connection stays checked out
    with pytest.raises(errors.PoolExhausted) as caught:
        client.get("/x")
    assert (caught.value.status, caught.value.code) == (503, "pool_exhausted")
    assert "pool" in caught.value.message
    assert client.breaker.status() | {"opened_at": None} == client.breaker.status() | {
        "state": "closed", "failures": 0, "opened_at": None}
    held.close()
    assert client.get("/x").status_code == 200  # the connection came back
    call_log_flush()
    # The streamed call's row is written when it closes, dated when its answer came.
    assert list(CallLog.objects.order_by("created_at").values_list("outcome", flat=True)) == [
        "ok", "rejected", "ok"]


def test_the_bulkhead_caps_calls_in_flight_and_fails_fast_beyond(fake, make_upstream):
    make_upstream(bulkhead_max=2, bulkhead_wait=0.05, breaker_fail_max=1, retry_total=0)
    fake.script("/slow", Reply(200, body={"ok": True}, delay=0.4))
    client = upstream("api")
    results: list[object] = []
    lock = threading.Lock()

    def call() -> None:
        try:
            outcome: object = client.get("/slow", cache=False).status_code
        except errors.UpstreamError as err:
            outcome = err.code
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=call) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(map(str, results)) == ["200", "200"] + ["bulkhead_full"] * 4
    assert fake.max_concurrent == 2
    assert client.breaker.status()["state"] == "closed"  # local exhaustion never counts
    assert client.bulkhead.in_flight == 0 and client.bulkhead.waiting == 0


def test_a_bulkhead_slot_freed_in_time_goes_to_the_waiting_call(fake, make_upstream):
    make_upstream(bulkhead_max=1, bulkhead_wait=2.0, retry_total=0)
    fake.script("/x", Reply(200, body={"ok": True}, delay=0.1))
    client = upstream("api")
    with ThreadPoolExecutor(max_workers=3) as pool:
        statuses = list(pool.map(lambda _: client.get("/x", cache=False).status_code, range(3)))
    assert statuses == [200, 200, 200]
    assert fake.max_concurrent == 1


def test_a_streamed_call_holds_its_bulkhead_slot_until_closed(fake, make_upstream):
    make_upstream(bulkhead_max=1, bulkhead_wait=0.0, retry_total=0)
    fake.script("/s", Reply(200, body="abc"))
    client = upstream("api")
    response = client.get("/s", stream=True)
    with pytest.raises(errors.BulkheadFull) as full:
        client.get("/s")
    assert full.value.retry_after >= 1
    response.close()
    assert client.get("/s").status_code == 200
