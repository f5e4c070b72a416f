"""Actions on a shared jobs database for multi-process jobs tests, each in
its own Django process (the test's own SQLite database is in memory):

    python -m tests.support.jobs_cli migrate
    python -m tests.support.jobs_cli enqueue NAME '{"a": 1}'
    python -m tests.support.jobs_cli status JOB_ID
    python -m tests.support.jobs_cli reap SECONDS_AHEAD
    python -m tests.support.jobs_cli upstream NAME BASE_URL HEALTH_PATH INTERVAL
    python -m tests.support.jobs_cli tick EPOCH [EPOCH ...]       (ready / go handshake first)
    python -m tests.support.jobs_cli probes

Each prints one JSON line. The environment comes from `jobs_env()`.
"""
from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.support import migrated


def jobs_env(database_url: str, **extra: str) -> dict[str, str]:
    """The processes' environment on `database_url`; an SQLite file there starts as a
    copy of the run's migrated schema (tests.support.migrated), so `migrate` finds
    nothing to apply."""
    if database_url.startswith("sqlite:///"):
        migrated.sqlite_copy(database_url.removeprefix("sqlite:///"))
    env = dict(os.environ)
    env.pop("REDIS_URL", None)  # the database engine and database/local locks
    env.update({"DJANGO_SETTINGS_MODULE": "project.settings", "DATABASE_URL": database_url,
                "SECRET_KEY": "jobs-test-key", "DEBUG": "false", "CALL_LOG_FLUSH_INTERVAL": "0",
                "JOBS_BACKEND": "database", "DB_CONN_MAX_AGE": "0", **extra})
    return env


def main(argv: list[str]) -> Any:
    import django

    django.setup()
    from django.core.management import call_command
    from django.utils import timezone

    import tests.support.jobs  # noqa: F401
    from resilience.jobs import job_enqueue, jobs_reap
    from resilience.jobs.models import Job, ProbeResult
    from resilience.jobs.schedules import schedules_tick
    from resilience.models import Upstream

    action, *args = argv
    if action == "migrate":
        call_command("migrate", verbosity=0)
        return {"migrated": True}
    if action == "enqueue":
        return {"id": str(job_enqueue(args[0], args=json.loads(args[1])).pk)}
    if action == "status":
        row = Job.objects.get(pk=args[0])
        return {"status": row.status, "attempts": row.attempts, "result": row.result, "error": row.error}
    if action == "reap":
        return {"reaped": jobs_reap(now=timezone.now() + timedelta(seconds=float(args[0])))}
    if action == "upstream":
        Upstream.objects.update_or_create(name=args[0], defaults={
            "base_url": args[1], "health_path": args[2], "probe_interval": int(args[3]),
            "retry_total": 0, "breaker_enabled": False})
        return {"saved": args[0]}
    if action == "tick":
        print(json.dumps({"ready": True}), flush=True)
        sys.stdin.readline()
        queued = []
        for epoch in args:
            queued += schedules_tick(now=datetime.fromtimestamp(float(epoch), tz=UTC))
        return {"queued": queued}
    if action == "probes":
        return {"probes": ProbeResult.objects.count(),
                "jobs": sorted(Job.objects.filter(name="resilience.probe")
                               .values_list("unique_key", "status"))}
    raise SystemExit(f"unknown action {action!r}")


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])), flush=True)
