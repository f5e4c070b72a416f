"""Faults between the service and PostgreSQL (tests.support.faultproxy in
front of the shared server; the server itself is never touched). Collected
only on a run whose DATABASE_URL is PostgreSQL (the `postgres` marker).

What holds: the project's connect and statement timeouts reach libpq and the
server; with the database blackholed, refused, reset or slow, `/readyz`
answers (503 when it cannot reach the database) within the connect timeout
plus slack, never hangs; the telemetry writer's flush returns within the same
bound and keeps its rows; once the fault is lifted the next `/readyz` is 200
with no restart and the kept rows are written.

Not covered, by design: an established connection into a peer that keeps
acknowledging TCP but never answers (what this userspace proxy's blackhole
does to an open connection) can only be bounded by a client-side read
timeout, which libpq does not have; a real network drop (unacknowledged
data) is closed by the kernel after `tcp_user_timeout` (DB_TCP_USER_TIMEOUT).
The tests therefore start each fault on a fresh connection, as every request
does when the connection pool hands out a new one.
"""
from __future__ import annotations

import time

import pytest
from django.db import connection
from django.test import Client

from resilience.models import CallLog
from resilience.telemetry.calllog import call_log_flush, call_log_record, call_log_writer
from tests.resilience.telemetry.conftest import Call
from tests.support.faultproxy import FaultProxy

pytestmark = pytest.mark.postgres

SLACK = 2.0

FAULTS = [
    ("latency", lambda p: p.latency(0.2), True),
    ("bandwidth", lambda p: p.bandwidth(20_000), True),
    ("reset", lambda p: p.reset_after(0), False),
    ("blackhole", lambda p: p.blackhole(), False),
    ("refused", lambda p: p.refuse(), False),
]


@pytest.fixture
def through_proxy(db):
    settings = connection.settings_dict
    saved = (settings["HOST"], settings["PORT"])
    with FaultProxy(settings["HOST"] or "127.0.0.1", int(settings["PORT"] or 5432)) as proxy:
        connection.close()
        settings["HOST"], settings["PORT"] = "127.0.0.1", proxy.port
        try:
            yield proxy
        finally:
            proxy.heal()
            connection.close()
            settings["HOST"], settings["PORT"] = saved


def test_the_timeouts_reach_libpq_and_the_server(db):
    options = connection.settings_dict["OPTIONS"]
    assert options["connect_timeout"] >= 1
    assert "statement_timeout=" in options["options"]
    with connection.cursor() as cursor:
        cursor.execute("SHOW statement_timeout")
        shown = cursor.fetchone()[0]
    assert shown not in ("0", "0ms"), "no statement timeout on the server session"


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("fault", "switch", "reachable"), FAULTS, ids=[f[0] for f in FAULTS])
def test_readyz_answers_within_the_connect_timeout_and_recovers(through_proxy, fault, switch, reachable,
                                                                settings):
    proxy = through_proxy
    # The scraper's token reads /readyz's details (anonymous callers get the status alone).
    settings.RESILIENCE = {**settings.RESILIENCE, "METRICS_TOKEN": "pg-fault-scraper"}
    client = Client(HTTP_AUTHORIZATION="Bearer pg-fault-scraper")
    bound = float(connection.settings_dict["OPTIONS"]["connect_timeout"]) + SLACK
    assert client.get("/readyz").status_code == 200

    connection.close()  # the fault meets a fresh connection (see the module docstring)
    switch(proxy)
    started = time.monotonic()
    response = client.get("/readyz")
    elapsed = time.monotonic() - started
    print(f"postgres {fault}: /readyz {response.status_code} in {elapsed:.3f}s")
    assert elapsed < bound, f"{fault}: /readyz took {elapsed:.2f}s"
    if reachable:
        assert response.status_code == 200
    else:
        assert response.status_code == 503
        assert response.json()["checks"]["database"]["ok"] is False

        # The telemetry writer meets the same fault: bounded, and nothing lost.
        call_log_writer().discard()
        call_log_flush()
        connection.close()
        call_log_record(Call(upstream="pg-fault", outcome="timeout", status=None))
        started = time.monotonic()
        written = call_log_flush()
        flush_took = time.monotonic() - started
        print(f"postgres {fault}: writer flush gave up in {flush_took:.3f}s")
        # Two database steps (the sampling rates read, the write), each at most the connect timeout.
        assert flush_took < 2 * float(connection.settings_dict["OPTIONS"]["connect_timeout"]) + SLACK
        assert written == 0 and call_log_writer().pending() >= 1

    proxy.heal()
    connection.close()
    assert client.get("/readyz").status_code == 200, f"not recovered after {fault}"
    if not reachable:
        assert call_log_flush() >= 1  # the kept row is written once the database is back
        assert CallLog.objects.filter(upstream="pg-fault").count() == 1
