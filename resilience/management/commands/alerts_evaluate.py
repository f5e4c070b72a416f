"""`manage.py alerts_evaluate`: evaluate every enabled alert rule once now
(the jobs scheduler does it every EVALUATE_INTERVAL seconds) and print the
moves; notifications go out as from the schedule (once per transition,
whoever evaluates)."""
from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from resilience.alerts.services import alerts_evaluate, alerts_firing


class Command(BaseCommand):
    help = "Evaluate the alert rules once and list the alerts firing."

    def handle(self, *args: Any, **options: Any) -> None:
        for move in alerts_evaluate():
            self.stdout.write(f"{move['rule']} [{move['subject']}]: {move['from']} -> {move['to']} "
                              f"(value {move['value']})")
        firing = alerts_firing()
        self.stdout.write(f"{len(firing)} alert(s) firing")
        for alert in firing:
            rule = alert.rule
            self.stdout.write(f"  {rule.severity:8} {rule.name} [{alert.subject}] value {alert.value}")
