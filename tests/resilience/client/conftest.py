"""Fixtures shared by the client's tests."""
from __future__ import annotations

import pytest

from tests.support.fake_upstream import FakeUpstream


@pytest.fixture
def fakes():
    """Three fake upstreams on loopback, one per endpoint of a pool."""
    servers = [FakeUpstream().start() for _ in range(3)]
    yield servers
    for server in servers:
        server.stop()
