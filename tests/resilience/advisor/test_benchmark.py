"""The upstream benchmark (resilience.advisor.benchmark)."""
from __future__ import annotations

import pytest

from resilience.advisor.benchmark import benchmark_run
from resilience.client import reset_clients
from resilience.models import Upstream
from tests.support.fake_upstream import FakeUpstream, Reply

pytestmark = pytest.mark.django_db


def test_neither_side_follows_a_redirect_to_another_host(fake):
    """L1 (issue 23): the bare session followed an upstream's redirect to another host."""
    with FakeUpstream() as elsewhere:
        fake.script("/bench", Reply(302, headers={"Location": f"{elsewhere.url}/stolen"}))
        Upstream.objects.create(name="redirecting", base_url=fake.url, retry_total=0)
        reset_clients()
        report = benchmark_run(upstream="redirecting", path="/bench", requests=3, concurrency=1)
        assert elsewhere.requests == []
    assert fake.count("/bench") == 6  # three from each side, none followed
    assert report["bare"]["ok"] == report["client"]["ok"] == 3
