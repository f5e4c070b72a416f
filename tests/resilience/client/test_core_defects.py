"""The defects a careful read of the old client found, each pinned down."""
from __future__ import annotations

import threading

import pytest
import requests

from resilience import exceptions as errors
from resilience import upstream
from resilience.client import send as send_module
from resilience.models import BreakerEvent, CallLog, Upstream
from resilience.telemetry.calllog import call_log_flush
from tests.support.fake_upstream import Reply


def test_keyboard_interrupt_is_not_turned_into_an_upstream_error(fake, make_upstream, monkeypatch):
    make_upstream()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(send_module, "prepare", interrupted)
    with pytest.raises(KeyboardInterrupt):
        upstream("api").get("/x")


def test_a_policy_reload_closes_the_old_session(fake, make_upstream, settings,
                                               django_capture_on_commit_callbacks):
    settings.RESILIENCE = {**settings.RESILIENCE, "POLICY_CHECK_INTERVAL": 0}
    make_upstream()
    fake.script("/x", Reply(200, body={"ok": True}))
    client = upstream("api")
    client.get("/x")
    old_session = client._live.current().session
    adapter = old_session.get_adapter(fake.url)
    assert len(adapter.poolmanager.pools) == 1  # one pool, one idle connection
    row = Upstream.objects.get(name="api")
    row.read_timeout = 3.0
    with django_capture_on_commit_callbacks(execute=True):  # the version bump runs on commit
        row.save()
    assert client.policy.read_timeout == 3.0  # reloaded...
    assert len(adapter.poolmanager.pools) == 0  # ...and the old pools are closed


def test_an_error_answer_to_a_streamed_call_is_read_and_closed(fake, make_upstream):
    make_upstream(retry_total=0)
    fake.script("/s", Reply(404, body={"error": "missing"}))
    with pytest.raises(errors.UpstreamHTTPError) as caught:
        upstream("api").get("/s", stream=True)
    response = caught.value.response
    assert response.json() == {"error": "missing"}  # read, so the connection went back
    assert response.raw.closed or response.raw.connection is None
    kept = upstream("api").get("/s", stream=True, raise_for_status=False)
    assert kept.status_code == 404 and kept.json() == {"error": "missing"}


def test_breaker_transitions_are_recorded_off_the_calling_thread_and_lock(fake, make_upstream):
    make_upstream(retry_total=0, breaker_fail_max=1)
    fake.script("/down", Reply(500))
    client = upstream("api")
    lock_free_during_listener: list[bool] = []

    def listener(change) -> None:
        from resilience.cache import default_cache

        probe = default_cache().lock(client.breaker.storage.k_lock, timeout=1)
        got = probe.acquire(blocking=False)
        lock_free_during_listener.append(got)
        if got:
            probe.release()

    client.breaker.listeners.append(listener)
    with pytest.raises(errors.UpstreamHTTPError):
        client.get("/down")
    assert lock_free_during_listener == [True]
    assert BreakerEvent.objects.count() == 0  # queued, not written by the request
    call_log_flush()
    assert list(BreakerEvent.objects.values_list("from_state", "to_state")) == [("closed", "open")]


def test_single_flight_followers_get_their_own_response_and_raise_by_their_own_wish(fake, make_upstream):
    make_upstream(cache_ttl=60, retry_total=0)
    fake.script("/gone", Reply(404, body={"e": 1}, delay=0.2))
    client = upstream("api")
    results: dict[str, object] = {}
    barrier = threading.Barrier(3)

    def call(name: str, raise_for_status: bool) -> None:
        barrier.wait()
        try:
            results[name] = client.get("/gone", raise_for_status=raise_for_status)
        except errors.UpstreamHTTPError as err:
            results[name] = err

    threads = [threading.Thread(target=call, args=(f"raise{i}", True)) for i in range(2)]
    threads.append(threading.Thread(target=call, args=("keep", False)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fake.count("/gone") == 1
    assert isinstance(results["keep"], requests.Response) and results["keep"].status_code == 404
    raised = [results["raise0"], results["raise1"]]
    assert all(isinstance(r, errors.UpstreamHTTPError) for r in raised)
    responses = [results["keep"], *(r.response for r in raised)]
    assert len({id(r) for r in responses}) == 3  # nobody shares a mutable response
    assert raised[0] is not raised[1]


def test_a_follower_of_a_failed_flight_gets_its_own_copy_of_the_error(fake, make_upstream):
    make_upstream(cache_ttl=60, retry_total=0, read_timeout=0.1)
    fake.script("/slow", Reply(200, delay=0.4))
    client = upstream("api")
    caught: list[BaseException] = []
    barrier = threading.Barrier(2)

    def call() -> None:
        barrier.wait()
        try:
            client.get("/slow")
        except errors.UpstreamError as err:
            caught.append(err)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [e.code for e in caught] == ["upstream_timeout"] * 2
    assert caught[0] is not caught[1]
    call_log_flush()
    assert sorted(CallLog.objects.values_list("outcome", flat=True)) == ["timeout", "timeout"]


@pytest.mark.parametrize("face", ["sync", "async"])
def test_a_refused_connection_is_not_retried(make_upstream, face):
    import socket

    from asgiref.sync import async_to_sync

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    make_upstream(base_url=f"http://127.0.0.1:{port}", retry_total=3, retry_backoff_factor=1.0)
    client = upstream("api")
    with pytest.raises(errors.UpstreamConnectionError) as caught:
        if face == "sync":
            client.get("/x")
        else:
            async_to_sync(client.aget)("/x")
    assert "ConnectionRefusedError [Errno 111]" in caught.value.message  # the cause, named
    call_log_flush()
    row = CallLog.objects.get()
    assert (row.attempts, row.outcome) == (1, "connection_error")
    assert "Errno 111" in row.error
