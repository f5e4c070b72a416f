"""`manage.py benchmark_upstream NAME [--path P] [--requests N] [--concurrency C]`:
N calls through the resilient client, then N through a bare requests.Session
to the same URL, with a progress bar; prints both sides' figures and the
client's overhead (resilience.advisor.benchmark)."""
from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from resilience import exceptions as errors
from resilience.advisor.benchmark import benchmark_run

ROWS = (("throughput (req/s)", "throughput_rps"), ("p50 (ms)", "p50_ms"), ("p95 (ms)", "p95_ms"),
        ("p99 (ms)", "p99_ms"), ("ok", "ok"), ("errors", "errors"), ("seconds", "seconds"))


class Command(BaseCommand):
    help = "Benchmark an upstream through the resilient client against a bare requests.Session."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="the upstream")
        parser.add_argument("--path", default="/", help="path under its base URL (default /)")
        parser.add_argument("--requests", type=int, default=200, help="calls per side (default 200)")
        parser.add_argument("--concurrency", type=int, default=4, help="threads per side (default 4)")
        parser.add_argument("--json", action="store_true", help="print the report as JSON")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    def handle(self, *args: Any, **options: Any) -> None:
        n, c = options["requests"], options["concurrency"]
        if n < 1 or c < 1:
            raise CommandError("--requests and --concurrency must be at least 1")
        bar = None if options["no_progress"] else tqdm(total=2 * n, unit="req", file=self.stderr._out,
                                                        desc=f"{options['name']} (client, then bare)")
        try:
            report = benchmark_run(upstream=options["name"], path=options["path"], requests=n, concurrency=c,
                                   progress=bar.update if bar is not None else None)
        except errors.UpstreamError as err:
            raise CommandError(err.message) from err
        finally:
            if bar is not None:
                bar.close()
        if options["json"]:
            self.stdout.write(json.dumps(report, indent=2))
            return
        self.stdout.write(self.style.MIGRATE_HEADING(
            f"{report['upstream']} {report['url']}: {n} calls per side, concurrency {c}"))
        self.stdout.write(f"{'':20}{'client':>12}{'bare':>12}")
        for label, key in ROWS:
            self.stdout.write(f"{label:20}{_fmt(report['client'][key]):>12}{_fmt(report['bare'][key]):>12}")
        for side in ("client", "bare"):
            kinds = report[side]["errors_by_kind"]
            if kinds:
                self.stdout.write(f"errors ({side}): " + ", ".join(f"{k}={v}" for k, v in kinds.items()))
        overhead = report["overhead"]
        self.stdout.write(f"overhead (client / bare): p50 x{_fmt(overhead['p50'])}, "
                          f"p95 x{_fmt(overhead['p95'])}, throughput x{_fmt(overhead['throughput'])}")


def _fmt(value: Any) -> str:
    return "-" if value is None else str(value)
