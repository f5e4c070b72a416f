"""Operations: management commands, health endpoints, system checks, model
validation and call-log durability."""
from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.core.cache import cache
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.core.management import CommandError, call_command
from django.test import override_settings

from resilience import checks, upstream
from resilience.cache import cache_key
from resilience.models import CallLog, Upstream
from resilience.telemetry.calllog import call_log_flush, call_log_record
from tests.support.worker import run_worker, worker_env


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


# -- cache_clear -------------------------------------------------------------------------------
def test_cache_clear_by_namespace_with_dry_run_and_pattern():
    for i in range(3):
        cache.set(cache_key("ai", "tpl", i), i)
    cache.set(cache_key("http", "github", "x"), 1)
    cache.set(cache_key("http", "slack", "y"), 1)
    assert "ai: would remove 3 key(s)" in run("cache_clear", "--namespace", "ai", "--dry-run")
    assert cache.get("ai:tpl:0") == 0
    assert "http: removed 1 key(s)" in run("cache_clear", "--namespace", "http", "--pattern", "github:*")
    assert cache.get("http:slack:y") == 1
    out = run("cache_clear", "--all")
    assert "total: removed 4 key(s)" in out
    assert cache.get("ai:tpl:1") is None


def test_cache_clear_refuses_unknown_namespace():
    with pytest.raises(CommandError, match="unknown cache namespace"):
        run("cache_clear", "--namespace", "nope")


def test_cache_clear_on_redis(redis_url):
    caches = {"default": {"BACKEND": "resilience.cache.FallbackCache", "LOCATION": redis_url,
                          "KEY_PREFIX": "rsltest-cmd"}}
    with override_settings(CACHES=caches):
        cache.set("ai:a", 1)
        cache.set("ai:b", 1)
        assert cache.backend_name == "redis"
        assert "ai: removed 2 key(s)" in run("cache_clear", "--namespace", "ai")


# -- health ----------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_healthz_and_readyz(readyz_client):
    client = readyz_client
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["cache"]["backend"] in ("memory", "redis")


@pytest.mark.django_db
def test_database_status_reports_a_real_failure():
    from django.db import connections

    from resilience.ops.health import database_status

    broken = connections.create_connection("default")
    if broken.vendor == "sqlite":
        broken.settings_dict = {**broken.settings_dict, "NAME": "/nonexistent-dir/db.sqlite3"}
    else:
        from tests.support.redis_server import free_port

        broken.settings_dict = {**broken.settings_dict, "PORT": free_port()}
    status = database_status(broken)
    assert status["ok"] is False and status["error"]


# -- system checks -----------------------------------------------------------------------------
def test_e001_secret_key_required_without_debug():
    with override_settings(DEBUG=False, SECRET_KEY="django-insecure-development-only-never-in-production"):
        assert [e.id for e in checks.check_secret_key()] == ["resilience.E001"]
    with override_settings(DEBUG=True, SECRET_KEY="django-insecure-development-only-never-in-production"):
        assert checks.check_secret_key() == []


def test_e002_debug_on_public_hosts():
    with override_settings(DEBUG=True, ALLOWED_HOSTS=["api.example.com"]):
        assert [e.id for e in checks.check_debug_hosts()] == ["resilience.E002"]
    with override_settings(DEBUG=True, ALLOWED_HOSTS=["127.0.0.1"]):
        assert checks.check_debug_hosts() == []


def test_e003_e004_cache_configuration():
    with override_settings(REDIS_URL="http://nope"):
        assert "resilience.E003" in [e.id for e in checks.check_cache()]
    bad = {"default": {"BACKEND": "resilience.cache.FallbackCache", "LOCATION": "",
                       "OPTIONS": {"PROBE_INTERVAL": 0}}}
    with override_settings(CACHES=bad):
        assert "resilience.E004" in [e.id for e in checks.check_cache()]


@pytest.mark.django_db  # the accounts' check (resilience.E007) reads whether accounts are stored
def test_startup_refuses_to_serve_with_failed_checks():
    from project.startup import run_startup_checks

    dev_key = "django-insecure-development-only-never-in-production"
    with override_settings(DEBUG=False, SECRET_KEY=dev_key), \
            pytest.raises(ImproperlyConfigured, match="E001"):
        run_startup_checks()


# -- model validation ----------------------------------------------------------------------------
@pytest.mark.parametrize(("field", "value"), [
    ("base_url", "ftp://example.com"),
    ("base_url", "https://user:pw@example.com"),
    ("base_url", "https://example.com/?q=1"),
    ("retry_statuses", [200]),
    ("retry_statuses", [599]),
    ("retry_statuses", "503"),
    ("retry_methods", ["FETCH"]),
    ("cache_vary_headers", ["Cookie"]),
    ("default_headers", {"Authorization": "Bearer x"}),
    ("connect_timeout", 0),
    ("deadline", -1),
    ("breaker_fail_max", 0),
    ("health_path", "https://elsewhere.example/health"),
])
@pytest.mark.django_db
def test_policy_validation(field, value):
    row = Upstream(name="x", base_url="https://api.example.com")
    setattr(row, field, value)
    with pytest.raises(ValidationError) as caught:
        row.full_clean()
    assert field in caught.value.message_dict


@pytest.mark.django_db
def test_auth_needs_an_environment_variable_name():
    row = Upstream(name="x", base_url="https://api.example.com", auth_kind="bearer")
    with pytest.raises(ValidationError) as caught:
        row.full_clean()
    assert "auth_env_var" in caught.value.message_dict
    row.auth_env_var = "not a name"
    with pytest.raises(ValidationError):
        row.full_clean()
    row.auth_env_var = "UPSTREAM_GITHUB_TOKEN"
    row.full_clean()


# -- call logs: commands and durability ---------------------------------------------------------------
def _row(created_at: datetime, **fields) -> dict:
    return {"created_at": created_at, "upstream": "api", "method": "GET", "path": "/", "status": 200,
            "outcome": "ok", "latency_ms": 1.0, "attempts": 1, "retries": [], "cache_hit": False,
            "breaker_state": "closed", "request_id": "", "error": "", **fields}


@pytest.mark.django_db
def test_prune_call_logs():
    now = datetime.now(UTC)
    for age in (1, 3, 10, 30):
        call_log_record(_row(now - timedelta(days=age)))
    assert "deleted 2 call log(s)" in run("prune_call_logs", "--older-than", "7d")
    assert CallLog.objects.count() == 2
    assert "deleted 1 call log(s)" in run("prune_call_logs", "--older-than", "48h")
    with pytest.raises(CommandError, match="invalid age"):
        run("prune_call_logs", "--older-than", "a week")


@pytest.mark.django_db
def test_upstreams_command_prints_a_table(fake, make_upstream):
    make_upstream(cache_ttl=60)
    upstream("api").get("/a")
    upstream("api").get("/a")
    out = run("upstreams", "--window", "5m")
    header, line = out.strip().splitlines()[:2]
    assert header.split()[:3] == ["upstream", "breaker", "calls"]
    assert line.split()[:3] == ["api", "closed", "2"]
    assert "50.0" in line  # hit rate
    with pytest.raises(CommandError):
        run("upstreams", "--window", "2d")


@pytest.mark.django_db
def test_seed_upstreams_is_idempotent_and_keeps_admin_edits():
    assert "created: openai" in run("seed_upstreams")
    Upstream.objects.filter(name="openai").update(read_timeout=12)
    assert "all built-in upstreams exist" in run("seed_upstreams")
    seeded = Upstream.objects.get(name="openai")
    assert seeded.read_timeout == 12
    assert (seeded.retry_total, seeded.retry_backoff_factor) == (2, 0.5)


@pytest.mark.django_db(transaction=True)
def test_the_writer_thread_flushes_without_being_asked(fake, make_upstream, settings):
    import time

    settings.RESILIENCE = {**settings.RESILIENCE, "CALL_LOG_FLUSH_INTERVAL": 0.05}
    make_upstream()
    upstream("api").get("/background")
    give_up = time.monotonic() + 5
    while not CallLog.objects.filter(path="/background").exists() and time.monotonic() < give_up:
        time.sleep(0.02)
    assert CallLog.objects.filter(path="/background").exists()
    call_log_flush()


def test_no_call_log_is_lost_on_a_clean_shutdown(tmp_path, redis_url, fake):
    env = worker_env(str(tmp_path / "db.sqlite3"), redis_url, CALL_LOG_FLUSH_INTERVAL="3600")
    spec = {"name": "api", "base_url": fake.url, "retry_total": 0, "log_sample_rate": 1.0}

    run_worker(env, "setup", json.dumps(spec))
    # 25 calls, a writer that would wait an hour: only the exit hook can save them.
    assert run_worker(env, "call", "api", "/shutdown", "25", "0")["outcomes"] == ["ok"] * 25
    import sqlite3

    with sqlite3.connect(tmp_path / "db.sqlite3") as db:
        [(count,)] = db.execute("SELECT COUNT(*) FROM resilience_calllog WHERE path = '/shutdown'")
    assert count == 25


def test_w001_demo_outside_debug(settings):
    settings.DEBUG = False
    settings.RESILIENCE = {**settings.RESILIENCE, "DEMO_ENABLED": True}
    assert [w.id for w in checks.check_demo()] == ["resilience.W001"]
    settings.RESILIENCE = {**settings.RESILIENCE, "DEMO_ENABLED": False}
    assert checks.check_demo() == []
