"""On PostgreSQL: many writers upserting the same rows at once, and a real
outage (the connection cut by a TCP proxy in front of the shared server, never
the server itself). Not run on SQLite, which has one writer at a time."""
from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest
from django.db import connection, connections

from resilience.models import CallLog, HourRollup, MinuteRollup
from resilience.telemetry import calllog
from resilience.telemetry.calllog import CallLogWriter, call_log_flush, call_log_record
from tests.resilience.telemetry.conftest import NOW, Call
from tests.support.tcp_proxy import TcpProxy

MINUTE = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)


pytestmark = pytest.mark.postgres  # the PostgreSQL run only (tests/conftest.py)


@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_merge_every_count():
    workers, calls_each, flush_every = 4, 400, 25
    start = threading.Barrier(workers)
    failures: list[BaseException] = []

    def work(index: int) -> None:
        writer = CallLogWriter(f"worker-{index}")
        writer.autostart = False
        try:
            start.wait()
            for n in range(calls_each):
                outcome = "timeout" if n % 100 == 0 else "ok"
                writer.record(Call(outcome=outcome, latency_ms=1.0 + (n * 7 + index) % 500, sample_rate=0.0,
                                   status=None if outcome == "timeout" else 200))
                if n % flush_every == 0:
                    writer.flush()
            writer.flush()
            assert writer.pending() == 0
        except BaseException as err:  # reported by the test thread
            failures.append(err)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures
    minute = MinuteRollup.objects.get(start=MINUTE)
    assert (minute.calls, minute.errors, minute.reached) == (1600, 16, 1600)
    assert minute.outcomes == {"ok": 1584, "timeout": 16}
    assert sum(minute.latency.values()) == 1600
    assert HourRollup.objects.get().latency == minute.latency


@pytest.mark.django_db(transaction=True)
def test_an_outage_loses_no_rollup_count(caplog):
    database = connection.settings_dict
    saved = (database["HOST"], database["PORT"])
    writer = calllog.call_log_writer()
    with TcpProxy(database["HOST"] or "127.0.0.1", int(database["PORT"] or 5432)) as proxy:
        connection.close()
        database["HOST"], database["PORT"] = "127.0.0.1", proxy.port
        try:
            call_log_record(Call(created=NOW.timestamp() - 60, sample_rate=0.0))
            assert call_log_flush() == 1  # through the proxy
            proxy.cut()
            # A minute of traffic with PostgreSQL unreachable (timestamps moved, not waited for).
            for second in range(60):
                for _ in range(20):
                    call_log_record(Call(created=MINUTE.timestamp() + second, latency_ms=1.0 + second,
                                         sample_rate=0.0))
                call_log_record(Call(created=MINUTE.timestamp() + second, outcome="connection_error",
                                     status=None, sample_rate=0.0))
                assert call_log_flush() == 0
            assert writer.pending() == 60 * 21
            proxy.restore()
            assert call_log_flush() == 60 * 21
        finally:
            connection.close()
            database["HOST"], database["PORT"] = saved
    minute = MinuteRollup.objects.get(start=MINUTE)
    assert (minute.calls, minute.errors, minute.reached) == (1260, 60, 1260)
    assert sum(minute.latency.values()) == 1260
    assert HourRollup.objects.get(start=MINUTE.replace(minute=0)).calls == 1261
    assert CallLog.objects.filter(outcome="connection_error").count() == 60
    assert "database write failed" in caplog.text and "succeed again" in caplog.text
