"""/metrics: parsed with prometheus_client's own parser, in this process and
summed over two worker processes (multiprocess mode); who may read it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from resilience import exceptions as errors
from resilience import upstream
from resilience.telemetry import metrics
from tests.support.fake_upstream import Reply

pytestmark = pytest.mark.django_db

metrics.metrics_install()  # what web workers get from the middleware's import

#: The scrapes below come from the test client's 127.0.0.1, listed here (no token needed).
SCRAPER = ["127.0.0.1"]


@pytest.fixture(autouse=True)
def scraper_address(settings):
    settings.RESILIENCE = {**settings.RESILIENCE, "METRICS_ALLOWED_ADDRESSES": SCRAPER}

ROOT = Path(__file__).resolve().parents[3]


def scrape(client: Client | None = None, **headers) -> dict[str, dict[tuple, float]]:
    """{sample name: {sorted label items: value}} from GET /metrics."""
    response = (client or Client()).get("/metrics", **headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict, name: str, default: float = 0.0, **labels: str) -> float:
    return samples.get(name, {}).get(tuple(sorted(labels.items())), default)


@pytest.fixture
def name() -> str:
    """A fresh upstream name: this process's counters outlive every test."""
    return f"m-{uuid.uuid4().hex[:10]}"


# -- in this process -----------------------------------------------------------------------------
def test_upstream_calls_latency_retries_and_breaker(fake, make_upstream, name, breaker_clock):
    make_upstream(name, retry_total=1, breaker_fail_max=2, cache_ttl=60)
    fake.script("/flaky", Reply(503), Reply(200))
    fake.script("/down", Reply(500))
    upstream(name).get("/flaky")  # one retry
    upstream(name).get("/flaky")  # from the cache
    for _ in range(2):
        with pytest.raises(errors.UpstreamHTTPError):
            upstream(name).get("/down", cache=False)
    with pytest.raises(errors.BreakerOpen):
        upstream(name).get("/down", cache=False)

    samples = scrape()
    calls = "resilience_upstream_calls_total"
    assert value(samples, calls, upstream=name, outcome="ok") == 1
    assert value(samples, calls, upstream=name, outcome="cache_hit") == 1
    assert value(samples, calls, upstream=name, outcome="http_error") == 2
    assert value(samples, calls, upstream=name, outcome="breaker_open") == 1
    assert value(samples, "resilience_upstream_retries_total", upstream=name) == 1
    # Only calls that reached the upstream are timed.
    assert value(samples, "resilience_upstream_call_duration_seconds_count", upstream=name) == 3
    assert value(samples, "resilience_upstream_call_duration_seconds_bucket", upstream=name, le="+Inf") == 3
    assert value(samples, "resilience_upstream_call_duration_seconds_sum", upstream=name) > 0
    assert value(samples, "resilience_breaker_state", upstream=name) == 2
    assert value(samples, "resilience_breaker_failures", upstream=name) == 2
    assert value(samples, "resilience_breaker_transitions_total", upstream=name,
                 from_state="closed", to_state="open") == 1

    breaker_clock.advance(31)
    upstream(name).get("/ok", cache=False)  # the probe closes it
    samples = scrape()
    assert value(samples, "resilience_breaker_state", upstream=name) == 0
    assert value(samples, "resilience_breaker_transitions_total", upstream=name,
                 from_state="open", to_state="half-open") == 1
    assert value(samples, "resilience_breaker_transitions_total", upstream=name,
                 from_state="half-open", to_state="closed") == 1


def test_breaker_state_is_read_from_the_shared_storage(make_upstream, name):
    from resilience.client.breaker import OPEN, SharedBreaker

    make_upstream(name)
    make_upstream(f"{name}-off", breaker_enabled=False)
    assert value(scrape(), "resilience_breaker_state", -1, upstream=name) == 0
    SharedBreaker(name).storage.state = OPEN  # as another worker would leave it
    samples = scrape()
    assert value(samples, "resilience_breaker_state", upstream=name) == 2
    assert value(samples, "resilience_breaker_state", -1, upstream=f"{name}-off") == -1  # not exported


def test_cache_metrics(fake, make_upstream, name):
    make_upstream(name, cache_ttl=60)
    before = scrape()
    upstream(name).get("/c")
    upstream(name).get("/c")
    after = scrape()
    assert value(after, "resilience_cache_hits_total") >= value(before, "resilience_cache_hits_total") + 1
    assert value(after, "resilience_cache_sets_total") >= value(before, "resilience_cache_sets_total") + 1
    for field in ("misses", "deletes", "errors", "fallbacks"):
        assert f"resilience_cache_{field}_total" in after
    assert value(after, "resilience_cache_fallback", -1) == 0
    [(labels, one)] = after["resilience_cache_backend"].items()
    assert one == 1 and dict(labels)["backend"] in ("redis", "memory")


def test_generation_counts_and_tokens_from_counters_with_registry_labels(django_assert_num_queries):
    from aigen.generation.records import generation_log, generation_record, generation_row

    model = f"gpt-{uuid.uuid4().hex[:8]}"  # this process's counters outlive every test

    def gen(template_id: str = "emergency_plan", **fields) -> None:
        generation_record(generation_row(template_id=template_id, section_id="1", provider="openai",
                                          model=model, **fields))

    gen(prompt_tokens=10, completion_tokens=20, total_tokens=30)
    gen(prompt_tokens=5, completion_tokens=7, total_tokens=12)
    gen(cached=True, prompt_tokens=10, completion_tokens=20, total_tokens=30)  # spent nothing
    gen(outcome="error", error_code="upstream_timeout")
    for made_up in ("x" * 60, "../etc", "tpl-<script>"):  # not in the registry: one `other` series
        gen(template_id=made_up, outcome="error", error_code="template_not_found")
    generation_log.discard()  # the scrape must not need the records
    # The breaker states' query, then the operations collector's: jobs by queue and status, probed
    # upstreams, firing alerts; the accounts' states. Nothing reads Generation.
    with django_assert_num_queries(5):
        samples = scrape()
    labels = {"template": "emergency_plan", "provider": "openai", "model": model}
    assert value(samples, "aigen_generations_total", outcome="ok", cached="false", **labels) == 2
    assert value(samples, "aigen_generations_total", outcome="ok", cached="true", **labels) == 1
    assert value(samples, "aigen_generations_total", outcome="error", cached="false", **labels) == 1
    assert value(samples, "aigen_tokens_total", kind="prompt", **labels) == 15
    assert value(samples, "aigen_tokens_total", kind="completion", **labels) == 27
    other = {"template": "other", "provider": "openai", "model": model}
    assert value(samples, "aigen_generations_total", outcome="error", cached="false", **other) == 3
    templates = {dict(k).get("template") for k in samples["aigen_generations_total"]}
    assert not templates & {"x" * 60, "../etc", "tpl-<script>"}


def test_request_latency_by_view(db):
    client = Client()
    before = scrape(client)
    client.get("/healthz")
    client.get("/healthz")
    client.get("/no-such-page")
    after = scrape(client)
    count = "http_request_duration_seconds_count"
    healthz = {"view": "healthz", "method": "GET", "status": "200"}
    assert value(after, count, **healthz) == value(before, count, **healthz) + 2
    missing = {"view": "<unmatched>", "method": "GET", "status": "404"}
    assert value(after, count, **missing) == value(before, count, **missing) + 1
    assert value(after, count, view="metrics", method="GET", status="200") >= 1


def test_openmetrics_when_asked_for(db):
    response = Client().get("/metrics", HTTP_ACCEPT="application/openmetrics-text; version=1.0.0")
    assert response["Content-Type"].startswith("application/openmetrics-text")
    assert response.content.rstrip().endswith(b"# EOF")


# -- several worker processes ---------------------------------------------------------------------
WORKER = r"""
import json, sys

import django

django.setup()
from django.db import connection

from resilience.models import BreakerEvent, CallLog, Upstream

with connection.schema_editor() as editor:  # a private in-memory database
    for model in (Upstream, CallLog, BreakerEvent):
        editor.create_model(model)

import resilience.telemetry.metrics  # noqa: E402,F401  (connects the receivers, as a web worker does)
from resilience import exceptions, upstream  # noqa: E402

Upstream.objects.bulk_create([Upstream(
    name="mp", base_url=sys.argv[1], retry_total=1, retry_backoff_factor=0, retry_jitter=0,
    connect_timeout=0.5, read_timeout=2, deadline=5, breaker_fail_max=3)])
outcomes = []
for path in ["/retry"] + ["/ok"] * 4 + ["/fail"] * 4:
    try:
        upstream("mp").get(path)
        outcomes.append("ok")
    except exceptions.UpstreamError as err:
        outcomes.append(err.code)
print(json.dumps(outcomes))
"""


def test_metrics_are_summed_over_worker_processes(fake, tmp_path, settings):
    multiproc = tmp_path / "prometheus"
    multiproc.mkdir()
    fake.script("/retry", Reply(503), Reply(200))  # only the very first request is retried
    fake.script("/fail", Reply(500))
    env = {key: val for key, val in os.environ.items() if key != "REDIS_URL"}
    env.update({"DJANGO_SETTINGS_MODULE": "project.settings", "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
                "DATABASE_URL": "sqlite://:memory:", "SECRET_KEY": "worker", "DEBUG": "false",
                "CALL_LOG_FLUSH_INTERVAL": "0", "LOG_LEVEL": "WARNING"})
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, fake.url], cwd=ROOT, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    for worker in workers:
        out, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err[-3000:]
        outcomes = json.loads(out.strip().splitlines()[-1])
        assert outcomes[1:] == ["ok"] * 4 + ["upstream_http_error"] * 3 + ["breaker_open"]
    assert len(list(multiproc.glob("*.db"))) >= 2  # one file set per process

    settings.RESILIENCE = {**settings.RESILIENCE, "METRICS_MULTIPROC_DIR": str(multiproc)}
    samples = scrape()
    calls = "resilience_upstream_calls_total"
    assert value(samples, calls, upstream="mp", outcome="ok") == 10
    assert value(samples, calls, upstream="mp", outcome="http_error") == 6
    assert value(samples, calls, upstream="mp", outcome="breaker_open") == 2
    assert value(samples, "resilience_upstream_retries_total", upstream="mp") == 1
    assert value(samples, "resilience_upstream_call_duration_seconds_count", upstream="mp") == 16
    assert value(samples, "resilience_upstream_call_duration_seconds_bucket", upstream="mp", le="+Inf") == 16
    assert value(samples, "resilience_breaker_transitions_total", upstream="mp",
                 from_state="closed", to_state="open") == 2
    # This process's own registry is not what multiprocess mode exports.
    assert not any(dict(labels).get("view") == "healthz"
                   for labels in samples.get("http_request_duration_seconds_count", {}))
    assert "resilience_cache_hits_total" in samples  # the scrape-time collectors still run


# -- who may read it --------------------------------------------------------------------------------
@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "127.0.0.2", "::ffff:127.0.0.1", "10.0.0.5"])
def test_loopback_is_no_exception_without_a_token(db, settings, address):
    settings.RESILIENCE = {**settings.RESILIENCE, "METRICS_ALLOWED_ADDRESSES": []}
    response = Client().get("/metrics", REMOTE_ADDR=address)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"
    assert "METRICS_TOKEN" in response.json()["error"]["message"]


def test_a_listed_address_or_network_may_scrape(db, settings):
    settings.RESILIENCE = {**settings.RESILIENCE, "METRICS_ALLOWED_ADDRESSES": ["10.0.0.0/24", "::1"]}
    for address in ("10.0.0.5", "::1", "::ffff:10.0.0.9"):
        assert Client().get("/metrics", REMOTE_ADDR=address).status_code == 200, address
    for address in ("10.0.1.5", "127.0.0.1"):  # loopback only when listed
        assert Client().get("/metrics", REMOTE_ADDR=address).status_code == 403, address


@pytest.mark.parametrize("headers", [
    {"REMOTE_ADDR": "10.0.0.5"},
    {"REMOTE_ADDR": "192.168.1.1", "HTTP_AUTHORIZATION": "Bearer anything"},
    {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": "203.0.113.9"},  # relayed by a local proxy
    {"REMOTE_ADDR": "127.0.0.1", "HTTP_FORWARDED": "for=203.0.113.9"},
    {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_REAL_IP": "203.0.113.9"},
])
def test_elsewhere_without_a_token_is_forbidden(db, headers):
    response = Client().get("/metrics", **headers)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"


def test_a_bad_address_entry_is_a_system_check_error(settings):
    from resilience.checks import check_metrics_addresses

    settings.RESILIENCE = {**settings.RESILIENCE, "METRICS_ALLOWED_ADDRESSES": ["10.0.0.0/24", "prometheus"]}
    assert [m.id for m in check_metrics_addresses()] == ["resilience.E006"]


def test_a_configured_token_is_required_from_everyone(db, settings):
    settings.RESILIENCE = {**settings.RESILIENCE, "METRICS_TOKEN": "scrape-me",
                           "METRICS_ALLOWED_ADDRESSES": []}
    client = Client()
    for headers in ({}, {"HTTP_AUTHORIZATION": "Bearer wrong"}, {"HTTP_AUTHORIZATION": "Token scrape-me"},
                    {"REMOTE_ADDR": "10.0.0.5"}):
        response = client.get("/metrics", **headers)
        assert response.status_code == 401, headers
        assert response.json()["error"]["code"] == "not_authenticated"
        assert response["WWW-Authenticate"].startswith("Bearer")
    for address in ("127.0.0.1", "10.0.0.5"):
        assert client.get("/metrics", REMOTE_ADDR=address,
                          HTTP_AUTHORIZATION="Bearer scrape-me").status_code == 200
    assert "resilience_cache_hits_total" in scrape(client, REMOTE_ADDR="10.0.0.5",
                                                   HTTP_AUTHORIZATION="bearer scrape-me")


def test_only_get(db):
    assert Client().post("/metrics").status_code == 405
