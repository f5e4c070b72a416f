"""An alert evaluator in a process of its own, for the exactly-once test:

    python -m tests.support.alerts_worker migrate
    python -m tests.support.alerts_worker seed          (a failing upstream in the rollups, one rule)
    python -m tests.support.alerts_worker evaluate      (ready, then go <epoch>, then one evaluation)

Each prints one JSON line. The environment comes from `worker_env()` plus
ALERT_WEBHOOK_URL / ALERT_WEBHOOK_SECRET.
"""
from __future__ import annotations

import json
import sys
import time


def _seed() -> dict:
    from django.utils import timezone

    from resilience.alerts.models import AlertRule
    from resilience.alerts.services import alert_rules_seed
    from resilience.models import Upstream
    from resilience.telemetry.rollups import RollupDelta, minute_of, rollups_write

    alert_rules_seed()
    AlertRule.objects.exclude(name="success-rate-critical").update(enabled=False)
    AlertRule.objects.filter(name="success-rate-critical").update(for_seconds=0, enabled=True)
    Upstream.objects.get_or_create(name="llm", defaults={"base_url": "http://127.0.0.1:9",
                                                         "breaker_enabled": False})
    delta = RollupDelta()
    for index in range(20):
        delta.add_call(outcome="http_error" if index < 10 else "ok", attempts=1, latency_ms=50,
                       cache_hit=False)
    rollups_write({("llm", "", minute_of(timezone.now().timestamp())): delta})
    return {"seeded": True}


def _evaluate() -> dict:
    from resilience.alerts.services import alerts_evaluate

    print(json.dumps({"ready": True}), flush=True)
    start_at = float(sys.stdin.readline().split()[1])
    time.sleep(max(0.0, start_at - time.time()))
    return {"moves": alerts_evaluate()}


def main(argv: list[str]) -> None:
    import django

    django.setup()
    action = argv[0]
    if action == "migrate":
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        result = {"migrated": True}
    elif action == "seed":
        result = _seed()
    elif action == "evaluate":
        result = _evaluate()
    else:
        raise SystemExit(f"unknown action {action!r}")
    print(json.dumps(result, default=str), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
