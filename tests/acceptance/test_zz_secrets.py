"""Secrets never in a response, a log line or a call-log row: the known
test secrets (conftest.SECRETS: the Django key, the provider key, the metrics
token, an upstream credential) and the users' API tokens are grepped for in
everything the suite saw: every response the outside-in tests recorded, the
live server's whole output (at DEBUG), its call-log rows, schemathesis's
output, and every log record of the in-process tests.

Collected last (the file name), so the corpus holds the rest of the suite
(checked: every other acceptance test of the run ran in this process before
this one, which under pytest-xdist takes `--dist loadfile`); run alone it
still attacks the likeliest leaks itself first: an upstream that echoes its
credential in a failure, the policy detail, /readyz, /metrics."""
from __future__ import annotations

import requests

from tests.acceptance.conftest import SECRETS
from tests.support.fake_upstream import Reply


def test_no_secret_anywhere_the_suite_looked(live, exposure, request):
    elsewhere = [item.nodeid for item in request.session.items if item.get_closest_marker("acceptance")
                 and item is not request.node and item.nodeid not in exposure.tests]
    assert not elsewhere, (f"{len(elsewhere)} acceptance tests ran in another process or after this one, "
                           f"out of the corpus (pytest-xdist: --dist loadfile): {elsewhere[:5]}")
    key = SECRETS["UPSTREAM_ACCEPT_KEY"]
    # An upstream that echoes the credential it was sent in its error body and headers.
    live.upstream.script("/", Reply(500, body={"error": f"bad credential Bearer {key}"},
                                    headers={"X-Echo": f"Bearer {key}"}))
    staff, user = live.headers(staff=True), live.headers()
    api = f"{live.url}/api/resilience"
    seen = {
        "probe": requests.post(f"{api}/upstreams/secured/probe", headers=staff, timeout=30),
        "detail": requests.get(f"{live.url}/api/resilience/upstreams/secured", headers=staff, timeout=30),
        "calls": requests.get(f"{live.url}/api/resilience/upstreams/secured/calls", headers=user, timeout=30),
        "list": requests.get(f"{live.url}/api/resilience/upstreams", headers=user, timeout=30),
        "readyz": requests.get(f"{live.url}/readyz", timeout=30),
        "metrics": requests.get(f"{live.url}/metrics", timeout=30,
                                headers={"Authorization": f"Bearer {SECRETS['METRICS_TOKEN']}"}),
        "metrics_refused": requests.get(f"{live.url}/metrics", timeout=30,
                                        headers={"Authorization": "Bearer wrong"}),
        "generate": requests.post(f"{live.url}/api/ai/generate", headers=user, timeout=30, json={
            "template_id": "meeting_minutes", "section_id": "1", "use_cache": False,
            "data": {"meeting": {"title": "t", "date": "2026-11-28", "host": "h", "attendees": ["a"]}}}),
        "schema": requests.get(f"{live.url}/api/schema/", timeout=30),
    }
    for name, response in seen.items():
        assert response.status_code < 500, (name, response.status_code, response.text[:300])
        exposure.add_response(f"secrets {name}", response)
    assert seen["probe"].json()["probe"]["ok"] is False  # the echoing failure was really met
    assert seen["metrics"].status_code == 200 and seen["metrics_refused"].status_code in (401, 403)
    # The policy names the variable, never its value: the response was the one that matters.
    assert "UPSTREAM_ACCEPT_KEY" in seen["detail"].text
    assert any(r.headers.get("Authorization") == f"Bearer {key}" for r in live.upstream.requests)

    exposure.add("live call log", live.server.shell(
        "from resilience.telemetry.calllog import call_log_flush;"
        "from resilience.models import CallLog;"
        "print(repr(list(CallLog.objects.values())))"))
    exposure.add("live server output", live.server.output)

    needles = {**SECRETS, "user token": live.user_token, "staff token": live.staff_token}
    corpus = exposure.texts
    assert sum(len(text) for _, text in corpus) > 10_000, "too little was captured to mean anything"
    leaks = [(source, name) for source, text in corpus for name, value in needles.items() if value in text]
    print(f"secrets: {len(needles)} secrets grepped in {len(corpus)} captured texts "
          f"({sum(len(t) for _, t in corpus):,} characters): {len(leaks)} leaks")
    assert not leaks, leaks[:20]
