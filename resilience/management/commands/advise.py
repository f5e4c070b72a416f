"""`manage.py advise`: the advisor's findings (with their evidence) and its
suggestions, optionally for one upstream; `--json` for the raw report."""
from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.core.serializers.json import DjangoJSONEncoder

from resilience.advisor.services import advisor_run
from resilience.models import Upstream
from resilience.telemetry.calllog import call_log_flush

MARKS = {"critical": "!!", "warning": "! ", "info": "  "}


class Command(BaseCommand):
    help = "Print the advisor's findings and suggestions (from the telemetry rollups)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("upstream", nargs="?", help="only this upstream")
        parser.add_argument("--json", action="store_true", help="print the report as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        name = options["upstream"]
        if name and not Upstream.objects.filter(name=name).exists():
            raise CommandError(f"no upstream named {name!r}")
        call_log_flush()
        report = advisor_run(names=[name] if name else None)
        if options["json"]:
            self.stdout.write(json.dumps({
                "generated_at": report["generated_at"], "findings": [f.as_dict() for f in report["findings"]],
                "suggestions": [_suggestion(s) for s in report["suggestions"]]},
                cls=DjangoJSONEncoder, indent=2))
            return
        findings = report["findings"]
        if not findings:
            self.stdout.write(self.style.SUCCESS("no findings: every rule is quiet"))
        for finding in findings:
            where = finding.upstream + (f"/{finding.endpoint}" if finding.endpoint else "")
            style = self.style.ERROR if finding.severity == "critical" else (
                self.style.WARNING if finding.severity == "warning" else (lambda text: text))
            self.stdout.write(style(f"{MARKS[finding.severity]} [{finding.severity}] {where}: "
                                    f"{finding.kind}: {finding.title}"))
            evidence = finding.evidence
            figures = ", ".join(f"{key}={value}" for key, value in evidence["figures"].items())
            self.stdout.write(f"     figures: {figures}")
            windows = "; ".join(f"{k}: {v}" for k, v in evidence["windows"].items())
            self.stdout.write(f"     windows: {windows}")
            self.stdout.write(f"     threshold: {evidence['threshold']}")
            if evidence.get("advice"):
                self.stdout.write(f"     advice: {evidence['advice']}")
        suggestions = report["suggestions"]
        if suggestions:
            self.stdout.write(self.style.MIGRATE_HEADING(
                "Suggestions (apply or dismiss in the admin, or the API):"))
        for row in suggestions:
            self.stdout.write(f"  #{row.pk} [{row.status}] {row.upstream}: {row.field} "
                              f"{row.from_value!r} -> {row.to_value!r} ({row.kind})")
            self.stdout.write(f"     expected: {row.expected}")
            if row.effect:
                before, after = row.effect["before"], row.effect["after"]
                changed = [f"{key} {before[key]} -> {after[key]}" for key in before
                           if before[key] != after[key]]
                self.stdout.write(f"     effect over {row.effect['window_seconds']} s: {'; '.join(changed)}")


def _suggestion(row: Any) -> dict[str, Any]:
    return {"id": row.pk, "upstream": row.upstream, "endpoint": row.endpoint, "kind": row.kind,
            "severity": row.severity, "field": row.field, "from": row.from_value, "to": row.to_value,
            "expected": row.expected, "status": row.status, "effect": row.effect}
