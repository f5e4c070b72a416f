"""Fixtures for client tests: a fake upstream on loopback and policies for it."""
from __future__ import annotations

import pytest
from django.test import Client

from resilience.cache.breakers import BreakerClock
from resilience.cache.engine import Engine
from resilience.client import reset_clients
from resilience.client.breaker import SharedBreaker
from resilience.models import Upstream
from tests.support.fake_upstream import FakeUpstream

# Fast policies: tests wait milliseconds, not seconds.
FAST = {
    "connect_timeout": 0.1, "read_timeout": 2.0, "deadline": 5.0,
    "retry_total": 2, "retry_backoff_factor": 0.0, "retry_jitter": 0.0,
    "retry_after_max": 0.05, "breaker_fail_max": 3, "breaker_reset_timeout": 30.0,
    # Every wait of an open breaker is the reset timeout (recovery probing has its own tests).
    "breaker_probe_interval": 30.0,
    # Every call keeps its row, so tests can inspect them (sampling has its own tests).
    "log_sample_rate": 1.0,
}


@pytest.fixture
def make_upstream(db, fake):
    def make(name: str = "api", **fields) -> Upstream:
        values = {"base_url": fake.url, **FAST, **fields}
        row = Upstream(name=name, **values)
        row.full_clean()
        row.save()
        reset_clients()
        return row

    return make


class Clock:
    """A movable clock for the breaker's and the cache engine's `clock` seams."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def breaker_clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(SharedBreaker, "clock", staticmethod(clock))
    monkeypatch.setattr(BreakerClock, "now", staticmethod(clock))  # the state readers' clock
    return clock


@pytest.fixture
def cache_clock(monkeypatch):
    """The clock the cache engine measures its probe interval on."""
    clock = Clock()
    monkeypatch.setattr(Engine, "clock", staticmethod(clock))
    return clock



@pytest.fixture
def readyz_client(settings):
    """A client that reads /readyz's details: the scraper, with the metrics
    token (anonymous callers get the status alone)."""
    settings.RESILIENCE = {**settings.RESILIENCE, "METRICS_TOKEN": "readyz-details"}
    return Client(HTTP_AUTHORIZATION="Bearer readyz-details")


@pytest.fixture
def fakes():
    """Three fake upstreams on loopback, one per endpoint of a pool."""
    servers = [FakeUpstream().start() for _ in range(3)]
    yield servers
    for server in servers:
        server.stop()
