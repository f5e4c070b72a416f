"""`manage.py advise` and `manage.py benchmark_upstream` (against a loopback
upstream that misbehaves on purpose)."""
from __future__ import annotations

import json
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from tests.resilience.advisor.conftest import minute_delta, traffic
from tests.support.fake_upstream import Reply

pytestmark = pytest.mark.django_db


def run(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_advise_prints_findings_with_evidence_and_suggestions(policy):
    policy("api", retry_total=2, read_timeout=0.5)
    traffic("api", since=timedelta(hours=2), every=2, now=timezone.now(),
            make=lambda _: minute_delta(calls=1, attempts=3, outcome="http_error", signals={"retried": 1}))
    out, _ = run("advise")
    assert "api: retry_waste: retries rarely help: 0 of 60 retried calls recovered" in out
    assert "threshold: at least 20 retried calls" in out
    assert "retry_total 2 -> 0 (retry_waste)" in out
    report = json.loads(run("advise", "api", "--json")[0])
    assert report["findings"][0]["kind"] == "retry_waste"


def test_advise_quiet_and_unknown(policy):
    policy("api")
    assert "no findings" in run("advise")[0]
    with pytest.raises(CommandError, match="no upstream named 'nope'"):
        run("advise", "nope")


@pytest.mark.django_db(transaction=True)
def test_benchmark_against_a_loopback_upstream(fake, live_upstream):
    live_upstream("live", retry_total=0)
    fake.script("/bench", Reply(200, body="ok"), Reply(200, body="ok"), Reply(503), Reply(200, body="ok"))
    out, err = run("benchmark_upstream", "live", "--path", "/bench", "--requests", "40", "--concurrency", "4")
    assert "live (client, then bare)" in err and "80/80" in err  # the progress bar
    assert "throughput (req/s)" in out and "p95 (ms)" in out and "overhead (client / bare)" in out
    assert fake.count("/bench") == 80
    report = json.loads(run("benchmark_upstream", "live", "--path", "/x", "--requests", "10",
                            "--concurrency", "2", "--json", "--no-progress")[0])
    assert report["client"]["ok"] == report["bare"]["ok"] == 10
    assert report["client"]["p50_ms"] > 0 and report["overhead"]["p50"] > 0


@pytest.mark.django_db(transaction=True)
def test_benchmark_counts_errors_by_kind(fake, live_upstream):
    live_upstream("live", retry_total=0)
    fake.script("/bad", Reply(500))
    report = json.loads(run("benchmark_upstream", "live", "--path", "/bad", "--requests", "6", "--json",
                            "--no-progress")[0])
    assert report["client"]["errors_by_kind"] == {"upstream_http_error": 6}
    assert report["bare"]["errors_by_kind"] == {"http_500": 6}


def test_benchmark_refuses_bad_arguments(policy):
    policy("api")
    with pytest.raises(CommandError, match="at least 1"):
        run("benchmark_upstream", "api", "--requests", "0")
    with pytest.raises(CommandError, match="no upstream named"):
        run("benchmark_upstream", "nope", "--no-progress")
