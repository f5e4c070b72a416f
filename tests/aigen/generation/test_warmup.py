"""`cache_warmup --enqueue`: the warmup fanned out as jobs on the real
database engine, worked by the worker's run-once loop where the command
would wait (its `sleep` seam), with progress and a summary."""
from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from aigen.generation.services import text_generate
from aigen.generation.tasks import GENERATE_JOB
from aigen.management.commands import cache_warmup
from resilience.jobs.models import DeadLetter, Job
from resilience.jobs.worker import worker_run

pytestmark = pytest.mark.django_db(transaction=True)


def drain(seconds: float = 0) -> None:
    worker_run(batch=True, scheduler=False, interval=0.001)


@pytest.fixture
def worker_while_waiting(monkeypatch):
    """Where the command waits for workers, a worker runs what is queued."""
    monkeypatch.setattr(cache_warmup.Command, "sleep", staticmethod(drain))


def _warmup(*args: str) -> str:
    out = StringIO()
    call_command("cache_warmup", *args, stdout=out)
    return out.getvalue()


def test_enqueue_fans_out_as_jobs_with_progress_and_a_summary(worker_while_waiting, sample):
    out = _warmup("--template", "emergency_plan", "--enqueue")
    assert "Queued 5 job(s) as batch warmup-" in out and "priority low" in out
    assert "queued 5, running 0, done 0, failed 0" in out  # before any worker ran
    assert "queued 0, running 0, done 5, failed 0" in out  # after
    assert "5 generated, 0 already cached, 0 failed" in out
    jobs = Job.objects.filter(name=GENERATE_JOB)
    assert jobs.count() == 5 and len(set(jobs.values_list("group", flat=True))) == 1
    assert set(jobs.values_list("status", "priority")) == {("done", "low")}
    assert {row.args["section_id"] for row in jobs} == {"1", "2", "3", "4", "5"}
    # The worker filled the cache this process reads (local memory: same process here).
    warmed = text_generate(template_id="emergency_plan", section_id="3", data=sample("emergency_plan"))
    assert warmed.cached is True

    again = _warmup("--template", "emergency_plan", "--enqueue", "--priority", "normal")
    assert "0 generated, 5 already cached, 0 failed" in again
    forced = _warmup("--template", "emergency_plan", "--enqueue", "--force")
    assert "5 generated, 0 already cached, 0 failed" in forced
    assert Job.objects.filter(name=GENERATE_JOB, args__use_cache=False).count() == 5


def test_refused_entries_and_failed_jobs_are_counted_and_named(worker_while_waiting, mixed_warmup_file):
    out = StringIO()
    with pytest.raises(CommandError, match="3 of 4 warmup request"):
        call_command("cache_warmup", "--file", str(mixed_warmup_file), "--enqueue", stdout=out)
    text = out.getvalue()
    assert "not queued: nope/1: template_not_found" in text and "missing section_id, data" in text
    # Data the template cannot use is refused before queueing, as POST /api/ai/jobs refuses it.
    assert "not queued: emergency_plan/2: invalid: data.enterprise_info.employees_count" in text
    assert "Queued 1 job(s)" in text and "queued 0, running 0, done 1, failed 0" in text
    assert "1 generated, 0 already cached, 3 failed" in text
    assert not DeadLetter.objects.exists()


def test_no_wait_queues_and_leaves_the_jobs_to_the_workers():
    out = _warmup("--template", "meeting_minutes", "--enqueue", "--no-wait")
    assert "Not waiting" in out and "Done in" not in out
    queued = Job.objects.filter(name=GENERATE_JOB)
    assert queued.count() > 0 and set(queued.values_list("status", flat=True)) == {"queued"}
    drain()
    assert set(queued.values_list("status", flat=True)) == {"done"}


def test_ctrl_c_stops_waiting_and_says_what_is_left(monkeypatch):
    def interrupted(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_warmup.Command, "sleep", staticmethod(interrupted))
    with pytest.raises(CommandError, match=r"Stopped waiting: 5 queued and 0 running job\(s\) of warmup-"):
        _warmup("--template", "emergency_plan", "--enqueue")
    assert Job.objects.filter(status="queued").count() == 5  # still there for the workers


@pytest.mark.parametrize(("args", "message"), [
    (["--template", "emergency_plan", "--no-wait"], "go with --enqueue"),
    (["--template", "emergency_plan", "--priority", "high"], "go with --enqueue"),
    (["--template", "emergency_plan", "--enqueue", "--poll", "0"], "--poll must be positive"),
])
def test_enqueue_options_are_checked(args, message):
    with pytest.raises(CommandError, match=message):
        _warmup(*args)
    assert not Job.objects.exists()


def test_warmups_and_their_jobs_wait_for_endpoint_room_at_low_priority(worker_while_waiting, openai_fake,
                                                                        openai_policy):
    from prometheus_client import REGISTRY

    from resilience.client import reset_clients
    from resilience.models import Endpoint, Upstream

    Endpoint.objects.create(upstream=Upstream.objects.get(name="openai"), name="account",
                            base_url=openai_fake.url, rpm_limit=10_000)
    reset_clients()

    def admitted(priority: str) -> float:
        count = REGISTRY.get_sample_value("resilience_admission_wait_seconds_count", {"priority": priority})
        return count or 0

    low, normal = admitted("low"), admitted("normal")
    _warmup("--template", "emergency_plan", "--concurrency", "1")
    _warmup("--template", "emergency_plan", "--enqueue", "--force")
    assert admitted("low") - low == 10  # five in this process, five as jobs
    assert admitted("normal") == normal
