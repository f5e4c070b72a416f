"""The dashboard's advisor panels: findings with their evidence and the
process resources, rendered from the standalone includes."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.template.loader import render_to_string
from django.test import Client
from django.utils import timezone

from resilience.advisor.panels import findings_panel, resources_panel
from tests.resilience.advisor.conftest import minute_delta, traffic
from tests.support.roles import role_user

pytestmark = pytest.mark.django_db


def test_the_dashboard_shows_findings_and_resources(policy):
    policy("api", retry_total=2, read_timeout=0.5)
    traffic("api", since=timedelta(hours=2), every=2, now=timezone.now(),
            make=lambda _: minute_delta(calls=1, attempts=3, outcome="http_error", signals={"retried": 1}))
    client = Client()
    client.force_login(role_user("viewer", username="ops"))  # the dashboard needs view permissions
    page = client.get("/dashboard/").content.decode()
    assert 'id="rs-findings"' in page and "retry_waste" in page
    assert "threshold: at least 20 retried calls" in page
    assert "<code>retry_total</code>: 2 &rarr; 0" in page
    assert 'id="rs-resources"' in page and "MB RSS" in page


def test_the_includes_render_on_their_own(policy):
    policy("api")
    html = render_to_string("resilience/_findings.html", {"findings": findings_panel()})
    assert "No findings: every rule is quiet." in html
    html = render_to_string("resilience/_resources.html", {"resources": resources_panel()})
    assert "MB RSS" in html and "threads" in html
    assert ("no Redis" in html) == (not resources_panel()["processes"][0]["redis"])
