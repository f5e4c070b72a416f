"""Shared fixtures: real Redis (shared server and throwaway processes) and a
clean cache for every test."""
from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

import pytest
from django.core.cache import cache

from project import asgi_signals
from resilience.cache import reset_engines
from tests.support.redis_server import RedisProcess, ping, require
from tests.support.xdist_scheduler import AcceptanceTogether

if TYPE_CHECKING:
    from resilience.models import Upstream


def pytest_configure(config):
    config.addinivalue_line("markers", "postgres: needs PostgreSQL as the default database "
                                       "(deselected, not skipped, in a run on SQLite)")
    config.addinivalue_line("markers", "sqlite: about the SQLite default (deselected on PostgreSQL)")


@pytest.hookimpl(optionalhook=True)  # xdist's hook: `-p no:xdist` still runs the suite
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadfile` keeps tests/acceptance/ together on one worker (tests.support.xdist_scheduler)."""
    return AcceptanceTogether(config, log) if config.getvalue("dist") == "loadfile" else None


def pytest_collection_modifyitems(config, items):
    """Database-specific tests belong to their run (`.ci/run` makes both); in
    the other they are deselected, so a skip always means a missing service."""
    from django.conf import settings

    other = "sqlite" if settings.DATABASES["default"]["ENGINE"].endswith("postgresql") else "postgres"
    kept = [item for item in items if item.get_closest_marker(other) is None]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[item for item in items if item not in kept])
        items[:] = kept


@pytest.fixture(autouse=True)
def _clean_cache(monkeypatch):
    from aigen.edge.throttling import LEASES
    from aigen.generation.ledger import UsageBuffer, usage_buffer
    from resilience.client import reset_clients
    from resilience.telemetry.calllog import call_log_discard

    # The usage ledger waits for usage_flush() in every test, not only under tests/aigen: a writer
    # thread started by any test that bills a call outlives it and writes, a second later, with a
    # connection of its own (outside the test's transaction on PostgreSQL: rows in the next test;
    # on SQLite's shared in-memory database: "database table is locked" in another test's writes).
    monkeypatch.setattr(UsageBuffer, "autostart", False)
    usage_buffer.discard()
    reset_engines()
    reset_clients()
    call_log_discard()
    cache.clear()
    LEASES.clear()  # the throttle's blocks count in the cache cleared above
    yield
    reset_clients()
    reset_engines()


@pytest.fixture(autouse=True)
def _call_context():
    """Each test starts with no caller at the default priority, as each request does
    (a test that authenticates outside the middleware must not lend its caller on)."""
    from resilience.client.context import current_caller, current_priority

    tokens = current_caller.set(None), current_priority.set("normal")
    yield
    current_priority.reset(tokens[1])
    current_caller.reset(tokens[0])


@pytest.fixture(autouse=True)
def _asgi_request_receivers():
    """Once project.asgi is imported in this process, each test starts with the request signals'
    receivers it installs. Django's test client connects `close_old_connections` back after every
    request it makes; a later test's request to the ASGI application (its sync work on the test's
    own thread, under async_to_sync) then closed the test's connection inside its transaction
    ("the connection is closed"), or not, depending on which tests had run before it in the process."""
    if "project.asgi" in sys.modules:
        asgi_signals.install()


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    # The production hasher is slow on purpose; tests log users in by the dozen.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The shared test Redis database (TEST_REDIS_URL), flushed for the run."""
    url = os.environ["TEST_REDIS_URL"]
    if not ping(url):
        require(f"no Redis answering at {url}")
    import redis

    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture
def on_redis(redis_url):
    """The default cache on Redis (under a prefix of its own, emptied before
    and after), with the engines and clients rebuilt for it (breakers, locks
    and quotas are then shared there)."""
    from django.core.cache import cache
    from django.test import override_settings

    from resilience.cache import reset_engines
    from resilience.client import reset_clients

    caches = {"default": {"BACKEND": "resilience.cache.FallbackCache", "LOCATION": redis_url,
                          "KEY_PREFIX": "test-redis"}}
    with override_settings(CACHES=caches):
        reset_engines()
        reset_clients()
        cache.clear()
        yield
        cache.clear()
    reset_engines()


@pytest.fixture
def redis_process():
    """A private redis-server on a free port; the test may kill and restart it."""
    server = RedisProcess()
    if not server.binary:
        require("redis-server is not installed")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def policy(db):
    """Make a valid, saved upstream policy: `policy("name", field=value, ...)`."""
    from resilience.models import Upstream

    def make(name: str = "api", **fields: Any) -> Upstream:
        row = Upstream(name=name, base_url="http://127.0.0.1:9/", **fields)
        row.full_clean()
        row.save()
        return row

    return make


@pytest.fixture
def fake():
    """A scriptable upstream on 127.0.0.1 (tests.support.fake_upstream)."""
    from tests.support.fake_upstream import FakeUpstream

    with FakeUpstream() as server:
        yield server


@pytest.fixture
def live_upstream(db, fake):
    """A policy pointing at the fake upstream, with fast timeouts and retries
    (the advisor's and telemetry's counter tests)."""
    # Imported when used: this conftest loads before Django's apps are ready.
    from resilience.client import reset_clients
    from resilience.models import Upstream

    def make(name: str = "live", **fields: Any) -> Upstream:
        values = {"base_url": fake.url, "connect_timeout": 0.2, "read_timeout": 2.0, "deadline": 5.0,
                  "retry_total": 2, "retry_backoff_factor": 0.0, "retry_jitter": 0.0, "retry_after_max": 0.01,
                  "log_sample_rate": 1.0, **fields}
        row = Upstream(name=name, **values)
        row.full_clean()
        row.save()
        reset_clients()
        return row

    return make
