"""Tokens and the failure throttle against the running server (two gunicorn
workers, tests.support.live_server): a token revoked from another process
stops working on every route in every worker within the check interval
(L5, item 8), and the auth-failure throttle believes no X-Forwarded-For from a
loopback peer and never refuses a valid token (L4)."""
from __future__ import annotations

import time

import requests

ROUTES = [("GET", "/api/ai/templates", None, 200), ("GET", "/api/resilience/cache/stats", None, 200),
          ("POST", "/api/ai/generate", b"{}", 400), ("GET", "/v1/models", None, 200)]
PER_ROUTE = 8
#: TOKEN_CHECK_INTERVAL of the live server (tests/acceptance/conftest.py), and a margin.
CHECK_INTERVAL = 0.1


def _answers(live, key: str) -> list[tuple[int, str]]:
    """Each route PER_ROUTE times, each on a fresh connection (both workers take some)."""
    seen = []
    for method, path, body, _ in ROUTES:
        for _ in range(PER_ROUTE):
            response = requests.request(method, f"{live.url}{path}", data=body, timeout=30, headers={
                "Authorization": f"Bearer {key}", "Content-Type": "application/json", "Connection": "close"})
            code = response.json().get("error", {}).get("code", "") if response.status_code >= 400 else ""
            seen.append((response.status_code, code))
    return seen


def test_a_revoked_token_stops_on_every_route_in_every_worker(live):
    key = live.server.token("carol")
    expected = [ok for *_, ok in ROUTES for _ in range(PER_ROUTE)]
    assert [status for status, _ in _answers(live, key)] == expected
    live.server.shell("from django.contrib.auth import get_user_model;"
                      "from aigen.edge.tokens import token_revoke;"
                      "print(token_revoke(user=get_user_model().objects.get(username='carol')))")
    time.sleep(CHECK_INTERVAL * 1.5)  # the interval itself: tests/aigen/edge/test_tokens.py moves a clock
    refused = _answers(live, key)
    # 401 (OpenAI's code on /v1); or 429 once this address used up its failures (the next
    # test may have run first).
    assert set(refused) <= {(401, "authentication_failed"), (401, "invalid_api_key"), (429, "throttled")}, \
        sorted(set(refused))


def test_forwarded_for_from_a_loopback_peer_buys_no_fresh_bucket_and_valid_tokens_pass(live):
    session = requests.Session()  # one connection: one worker, whatever the cache
    valid = {"Authorization": f"Bearer {live.user_token}"}
    statuses = []
    # Past AUTH_FAILURE_THROTTLE (30 a minute, a fixed window), each "from" a new address, until
    # refused: 61 failures fill one window past 30 even when they straddle a minute's boundary.
    for i in range(61):
        response = session.get(f"{live.url}/api/ai/templates", timeout=30, headers={
            "Authorization": f"Bearer {i:040x}", "X-Forwarded-For": f"198.51.100.{i}"})
        statuses.append(response.status_code)
        if response.status_code == 429:
            break
    assert statuses[-1] == 429 and set(statuses) <= {401, 429}, statuses
    # The same address with a valid token: never refused by the failure throttle.
    assert session.get(f"{live.url}/api/ai/templates", headers=valid, timeout=30).status_code == 200
    response = session.post(f"{live.url}/api/ai/generate", data=b"{}", timeout=30,
                            headers={**valid, "Content-Type": "application/json"})
    assert response.status_code == 400, response.text  # past authentication: the empty body
