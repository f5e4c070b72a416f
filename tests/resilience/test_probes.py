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
