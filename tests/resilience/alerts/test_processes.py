"""Exactly one notification per transition with four evaluators in four
processes started at the same moment, sharing the database (a SQLite file,
or the PostgreSQL test database)."""
from __future__ import annotations

import pytest
from django.db import connection

from tests.resilience.alerts.conftest import SECRET
from tests.support.worker import gather, run_worker, spawn, start_together, worker_env

pytestmark = pytest.mark.django_db(transaction=True)
MODULE = "tests.support.alerts_worker"


@pytest.fixture
def env(tmp_path, receiver):
    hooks = {"ALERT_WEBHOOK_URL": receiver.root_url + "/hook", "ALERT_WEBHOOK_SECRET": SECRET,
             "SEED_UPSTREAMS_ON_MIGRATE": "false"}
    if connection.vendor == "postgresql":
        s = connection.settings_dict
        environment = worker_env("unused", "", **hooks)
        environment["DATABASE_URL"] = (f"postgres://{s['USER']}@{s['HOST'] or '127.0.0.1'}:"
                                       f"{s['PORT'] or 5432}/{s['NAME']}")
        return environment
    environment = worker_env(str(tmp_path / "alerts.sqlite3"), "", **hooks)
    run_worker(environment, "migrate", module=MODULE)
    return environment


def test_four_evaluators_at_once_send_exactly_one_notification(env, receiver):
    run_worker(env, "seed", module=MODULE)
    procs = [spawn(env, "evaluate", module=MODULE) for _ in range(4)]
    start_together(procs)
    results = gather(procs)

    moves = [move for result in results for move in result["moves"]]
    assert [(m["subject"], m["to"]) for m in moves] == [("llm", "firing")]  # one evaluator won the move
    [post] = receiver.posts()
    assert receiver.verified(post)
    assert post.json()["alerts"][0]["transition"] == "firing"
