"""Scheduled health probes on the real database engine against a real
loopback upstream that goes down and comes back: the history, the
`health_changed` signal on changes only, `/readyz` degraded (not down), and
the history's bound."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from resilience.jobs.models import Job, ProbeResult
from resilience.jobs.schedules import schedules_tick
from resilience.jobs.tasks import probe_history_prune
from resilience.jobs.worker import worker_run
from resilience.signals import health_changed

pytestmark = pytest.mark.django_db(transaction=True)

START = datetime(2026, 1, 1, tzinfo=UTC)



@pytest.fixture
def client(readyz_client):
    """These tests read /readyz's details: as the scraper (resilience/conftest.py)."""
    return readyz_client

@pytest.fixture
def changes():
    seen: list[tuple[str, str | None, str, int | None]] = []

    def receiver(sender, *, upstream, old, new, probe, **kwargs):
        seen.append((upstream, old, new, probe.get("status")))

    health_changed.connect(receiver, dispatch_uid="test-probes")
    yield seen
    health_changed.disconnect(dispatch_uid="test-probes")


def probe_interval(n: int) -> None:
    """Interval n of the schedule: the tick queues it, a worker runs it."""
    queued = schedules_tick(now=START + timedelta(seconds=60 * n + 1))
    assert f"probe:api:{int(START.timestamp()) // 60 + n}" in queued
    worker_run(batch=True, scheduler=False, interval=0.001)


def test_health_changed_fires_on_changes_only_and_readyz_degrades(make_upstream, fake, changes, client):
    make_upstream("api", health_path="/health", probe_interval=60)
    ready = []

    for n, up in enumerate([True, True, False, False, True, True]):
        if up and not fake.running:
            fake.start()  # back on the same port
        if not up and fake.running:
            fake.stop()  # refuses connections
        probe_interval(n)
        ready.append(client.get("/readyz"))

    assert changes == [("api", None, "healthy", 200), ("api", "healthy", "unhealthy", None),
                       ("api", "unhealthy", "healthy", 200)]
    history = list(ProbeResult.objects.order_by("created_at", "id").values_list("ok", "changed"))
    assert history == [(True, False), (True, False), (False, True), (False, False), (True, True),
                       (True, False)]
    assert fake.count("/health") == 4  # the probes that found it up
    down = ProbeResult.objects.filter(ok=False).first()
    assert down.status is None and "refused" in down.error.lower()
    assert set(Job.objects.filter(name="resilience.probe").values_list("status", flat=True)) == {"done"}

    # /readyz: ready while healthy, degraded (still 200, naming it) while down.
    assert [r.status_code for r in ready] == [200] * 6
    assert [r.json()["status"] for r in ready] == ["ready", "ready", "degraded", "degraded", "ready", "ready"]
    degraded = ready[2].json()["checks"]
    assert degraded["upstreams"]["unhealthy"] == ["api"] and degraded["database"]["ok"] is True
    assert degraded["upstreams"]["probed"]["api"]["healthy"] is False


def test_an_upstream_without_probes_is_not_in_readyz(make_upstream, client):
    make_upstream("quiet", health_path="/health", probe_interval=0)
    body = client.get("/readyz").json()
    assert body["status"] == "ready" and body["checks"]["upstreams"]["probed"] == {}
    assert not any(key.startswith("probe:") for key in schedules_tick(now=START))


def test_probe_history_is_bounded_per_upstream_and_by_age():
    now = timezone.now()
    for name in ("a", "b"):
        for _ in range(10):
            ProbeResult.objects.create(upstream=name, ok=True)
    old = ProbeResult.objects.create(upstream="c", ok=False)
    ProbeResult.objects.filter(pk=old.pk).update(created_at=now - timedelta(days=30))
    newest_a = list(ProbeResult.objects.filter(upstream="a").values_list("id", flat=True)[:4])

    assert probe_history_prune(keep=4, older_than=timedelta(days=7)) == 6 + 6 + 1
    assert list(ProbeResult.objects.filter(upstream="a").values_list("id", flat=True)) == newest_a
    assert ProbeResult.objects.filter(upstream="b").count() == 4
    assert not ProbeResult.objects.filter(upstream="c").exists()


def test_the_hourly_prune_job_applies_every_retention():
    """`resilience.prune`, queued by the schedule and run by a worker: call
    logs, finished jobs, engine results and probe history past retention."""
    from django_tasks_db.models import DBTaskResult

    from resilience.models import CallLog

    now = timezone.now()
    long_ago = now - timedelta(days=60)
    CallLog.objects.create(created_at=long_ago, upstream="api", method="GET", path="/", outcome="ok",
                           latency_ms=1)
    CallLog.objects.create(created_at=now, upstream="api", method="GET", path="/", outcome="ok", latency_ms=1)
    Job.objects.create(name="resilience.reap", status=Job.Status.DONE, finished_at=long_ago)
    Job.objects.create(name="resilience.reap", status=Job.Status.FAILED, finished_at=long_ago)
    kept = Job.objects.create(name="resilience.reap", status=Job.Status.DONE, finished_at=now)
    stale = ProbeResult.objects.create(upstream="api", ok=True)
    ProbeResult.objects.filter(pk=stale.pk).update(created_at=long_ago)
    ProbeResult.objects.create(upstream="api", ok=True)

    queued = schedules_tick(now=now)
    assert f"prune:{int(now.timestamp()) // 3600}" in queued
    worker_run(batch=True, scheduler=False, interval=0.001)
    prune = Job.objects.get(name="resilience.prune")
    assert prune.status == Job.Status.DONE, prune.error
    assert prune.result["telemetry_rows"] == 1 and prune.result["jobs"] == 2 and prune.result["probes"] == 1
    assert list(CallLog.objects.values_list("created_at", flat=True)) == [now]
    assert Job.objects.filter(pk=kept.pk).exists() and ProbeResult.objects.count() == 1
    old_result = DBTaskResult.objects.filter(status="SUCCESSFUL").first()
    DBTaskResult.objects.filter(pk=old_result.pk).update(finished_at=long_ago)
    assert Job.objects.filter(name="resilience.prune").count() == 1
    from resilience.jobs.tasks import jobs_prune

    assert jobs_prune()["engine_results"] == 1
    assert not DBTaskResult.objects.filter(pk=old_result.pk).exists()
