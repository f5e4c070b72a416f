"""Faults between the client and an upstream (tests.support.faultproxy in
front of a fake upstream on loopback), through the real client, sync and
async: every call ends by its deadline, with a documented error when it
cannot succeed, leaves a call-log row without the upstream's credential, and
the next call after the fault is lifted succeeds.

The bound asserted is the documented one: a call never outlives its
`deadline` (plus scheduling slack on a busy machine), whatever the
upstream does on the wire."""
from __future__ import annotations

import time

import pytest
from asgiref.sync import async_to_sync

from resilience import upstream
from resilience.client import reset_clients
from resilience.exceptions import UpstreamError
from resilience.models import CallLog, Upstream
from resilience.telemetry.calllog import call_log_flush
from tests.acceptance.conftest import SECRETS
from tests.support.fake_upstream import FakeUpstream, Reply
from tests.support.faultproxy import FaultProxy

DEADLINE = 2.5
#: Thread scheduling and interpreter slack on a shared 2-core machine: an upper
#: bound on lateness, not a speed target.
SLACK = 1.5
BODY = b"0123456789abcdef" * 4096  # 64 KiB: long enough for a trickle to outlast the deadline

POLICY = {"connect_timeout": 0.5, "read_timeout": 1.0, "deadline": DEADLINE, "retry_total": 2,
          "retry_backoff_factor": 0.05, "retry_jitter": 0.0, "retry_after_max": 0.1,
          "breaker_fail_max": 50, "log_sample_rate": 1.0,
          "auth_kind": Upstream.AuthKind.BEARER, "auth_env_var": "UPSTREAM_ACCEPT_KEY"}

#: (fault name, how to switch it on, whether the call can still succeed)
FAULTS = [
    ("latency_under_read_timeout", lambda p: p.latency(0.2), True),
    ("latency_over_read_timeout", lambda p: p.latency(1.5), False),
    ("bandwidth_slow_body", lambda p: p.bandwidth(4096), False),
    ("reset_mid_response", lambda p: p.reset_after(2000), False),
    ("blackhole", lambda p: p.blackhole(), False),
    ("refused", lambda p: p.refuse(), False),
]


@pytest.fixture
def fake():
    with FakeUpstream() as server:
        server.script("/big", Reply(200, body=BODY))
        yield server


@pytest.fixture
def proxy(fake):
    with FaultProxy("127.0.0.1", fake.port) as p:
        yield p


@pytest.fixture
def faulty(db, proxy):
    row = Upstream(name="faulty", base_url=f"http://{proxy.address}", **POLICY)
    row.full_clean()
    row.save()
    reset_clients()
    return row


def _call(mode: str) -> tuple[bool, float, str]:
    started = time.monotonic()
    try:
        if mode == "sync":
            response = upstream("faulty").get("/big", cache=False)
            body = response.content
        else:
            async def go() -> bytes:
                response = await upstream("faulty").aget("/big", cache=False)
                return response.content

            # async_to_sync, not asyncio.run: the client's thread-sensitive database work then
            # runs on this thread, whose connection the test database teardown closes.
            body = async_to_sync(go)()
    except UpstreamError as err:
        return False, time.monotonic() - started, f"{err.code}: {err.message}"
    assert body == BODY  # a success is the whole body, never a truncated one
    return True, time.monotonic() - started, "ok"


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize(("fault", "switch", "can_succeed"), FAULTS, ids=[f[0] for f in FAULTS])
def test_no_call_outlives_its_deadline_and_the_upstream_recovers(faulty, proxy, fake, mode, fault, switch,
                                                                 can_succeed, exposure):
    ok, elapsed, what = _call(mode)
    assert ok, what  # healthy path first: the proxy itself is transparent

    switch(proxy)
    ok, elapsed, what = _call(mode)
    print(f"upstream {mode} {fault}: ok={ok} elapsed={elapsed:.3f}s ({what})")
    assert elapsed < DEADLINE + SLACK, f"{fault}: the call took {elapsed:.2f}s, deadline {DEADLINE}s"
    if not can_succeed:
        assert not ok, f"{fault}: a call through this fault cannot have succeeded"
    exposure.add(f"upstream {fault} error", what)

    proxy.heal()
    ok, _, what = _call(mode)
    assert ok, f"not recovered after {fault}: {what}"

    call_log_flush()
    rows = list(CallLog.objects.filter(upstream="faulty").values())
    assert rows, "no call-log rows"
    if not can_succeed:
        assert any(row["outcome"] != "ok" for row in rows)
    exposure.add(f"upstream {fault} call log", repr(rows))
    # The credential reached the upstream (the proxy passed it), and nothing else.
    assert any(r.headers.get("Authorization") == f"Bearer {SECRETS['UPSTREAM_ACCEPT_KEY']}"
               for r in fake.requests)
