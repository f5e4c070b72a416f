"""Four OS processes with the real client share OAuth2 accounts through a
real Redis (and one SQLite file): under steady traffic with 2-second tokens
each account is refreshed as often as one process would refresh it, no
refresh token is ever reused, no caller sees an error; four fresh processes
started at once (a restart) cause no refresh storm; the database file holds
no token in clear."""
from __future__ import annotations

import json
import math

import pytest
import redis
from cryptography.fernet import Fernet

from tests.support.fake_token_server import FakeTokenServer
from tests.support.worker import gather, run_worker, spawn, start_together, worker_env

WORKER = "tests.support.accounts_worker"
PROCESSES = 4
LIFETIME = 2.0
SECONDS = 5.0


@pytest.fixture
def shared(tmp_path, redis_url):
    redis.Redis.from_url(redis_url).flushdb()
    tokens = FakeTokenServer(lifetime=LIFETIME).start()
    database = tmp_path / "accounts.sqlite3"
    env = worker_env(str(database), redis_url, CREDENTIALS_KEYS=Fernet.generate_key().decode())
    yield env, tokens, database
    tokens.stop()
    redis.Redis.from_url(redis_url).flushdb()


def calls(env, seconds: float) -> list[dict[str, int]]:
    procs = [spawn(env, "call", "accts", "/v1/models", str(seconds), "0.01", module=WORKER)
             for _ in range(PROCESSES)]
    start_together(procs)
    return [result["outcomes"] for result in gather(procs)]


def test_processes_refresh_each_account_once_per_lifetime_with_no_reuse(shared):
    env, tokens, database = shared
    names = ["a0", "a1"]
    spec = {"name": "accts", "base_url": tokens.url, "retry_total": 2, "connect_timeout": 0.5,
            "read_timeout": 3, "deadline": 5, "retry_backoff_factor": 0, "retry_jitter": 0,
            "endpoints": [{"name": name, "base_url": tokens.url, "credential_kind": "oauth2_refresh",
                           "token_url": tokens.token_url, "client_id": f"client-{name}"} for name in names],
            "tokens": {name: tokens.refresh_token_issue(f"client-{name}") for name in names}}
    run_worker(env, "setup", json.dumps(spec), module=WORKER)

    outcomes = calls(env, SECONDS)
    assert all(set(o) == {"ok"} for o in outcomes), outcomes
    # One process refreshes at most once per 4/5 of a lifetime, plus the first token.
    one_process = math.ceil(SECONDS / (LIFETIME * 0.8)) + 1
    counts = {name: tokens.refreshes[f"client-{name}"] for name in names}
    print("refreshes per account", counts, "reuses", tokens.reuses, "calls", outcomes)
    assert all(1 <= count <= one_process for count in counts.values()), counts
    assert tokens.reuses == 0 and tokens.provider_401 == 0

    # A restart of every process at once, tokens still valid: no refresh storm.
    before = sum(tokens.refreshes.values())
    outcomes = calls(env, 0.3)
    assert all(set(o) == {"ok"} for o in outcomes), outcomes
    assert sum(tokens.refreshes.values()) - before <= len(names)
    assert tokens.reuses == 0

    stored = database.read_bytes()
    assert not any(token.encode() in stored for token in tokens.issued)
