"""`manage.py demo`: a flaky demo upstream with traffic through it, to watch on
the dashboard (see resilience.ops.demo). `make demo` runs it with `--serve`."""
from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django.urls import reverse

from resilience.advisor.services import advisor_run
from resilience.ops.demo import (
    DEFAULT_BASE_URL,
    DEMO_UPSTREAM,
    DemoError,
    DemoServer,
    Tick,
    demo_enabled,
    demo_server_wait,
    demo_staff_ensure,
    demo_traffic_run,
    demo_upstream_ensure,
    demo_upstream_validate,
)
from resilience.telemetry.calllog import call_log_flush

HEADER = f"{'time':>7}  {'calls':>5}  {'ok':>4}  {'cached':>6}  {'errors':>6}  {'rejected':>8}  " \
         f"{'breaker':<9}  upstream is"


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise CommandError(f"--serve wants HOST:PORT, e.g. 127.0.0.1:8000, not {text!r}")
    return host, int(port)


class Command(BaseCommand):
    help = ("Drive traffic through the built-in flaky demo upstream so breakers trip and recover "
            "on the dashboard. With --serve, also serve the project from this process.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--serve", metavar="HOST:PORT",
                            help="serve the project (dashboard and demo upstream) from this process; "
                                 "needed to see breakers on the local-memory cache")
        parser.add_argument("--base-url", help=f"the flaky upstream's URL (default {DEFAULT_BASE_URL}, "
                                               "or the --serve address)")
        parser.add_argument("--duration", type=float, help="seconds to run (default: until Ctrl-C)")
        parser.add_argument("--threads", type=int, default=4, help="concurrent callers (default 4)")
        parser.add_argument("--interval", type=float, default=0.2,
                            help="seconds each caller pauses between calls (default 0.2)")
        parser.add_argument("--wait", type=float, default=15.0,
                            help="seconds to wait for the server to answer (default 15)")
        parser.add_argument("--advise-every", type=float, default=60.0,
                            help="print the advisor's findings for the demo upstream this often "
                                 "(seconds; 0: never; default 60)")
        parser.add_argument("--create-staff", action="store_true",
                            help="create the superuser admin/admin if missing (DEBUG only: a local demo)")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["threads"] < 1 or options["interval"] < 0:
            raise CommandError("--threads must be at least 1 and --interval not negative")
        server = None
        if options["serve"]:
            address = _address(options["serve"])
            if not demo_enabled():
                raise CommandError("the demo upstream is served only with DEBUG=true or "
                                   "RESILIENCE['DEMO_ENABLED'] (DEMO_ENABLED=true)")
            server = DemoServer(*address)
        origin = server.url if server else None
        base_url = options["base_url"] or (f"{origin}/demo/flaky" if origin else DEFAULT_BASE_URL)
        if origin is None:
            parts = urlsplit(base_url)
            origin = f"{parts.scheme}://{parts.netloc}"
        # Nothing is stored until the URL is valid and answers: a bad --base-url
        # leaves the `demo` upstream as it was.
        self._validate(base_url, create_staff=options["create_staff"])
        try:
            if server:
                server.start()
                self.stdout.write(f"Serving on {server.url} from this process (Ctrl-C stops it).")
            elif not getattr(cache, "redis_configured", False):
                self.stdout.write(self.style.WARNING(
                    "Note: without REDIS_URL the breaker state lives in this process only; a dashboard "
                    "served by another process will not see it. Use --serve, or set REDIS_URL."))
            demo_server_wait(base_url=base_url, timeout=options["wait"])
            self._setup(base_url, create_staff=options["create_staff"])
            self.stdout.write(self.style.SUCCESS(f"Dashboard: {origin}{reverse('resilience-dashboard')}"))
            self._drive(options)
        except DemoError as err:
            raise CommandError(str(err)) from err
        finally:
            if server:
                server.stop()

    def _validate(self, base_url: str, *, create_staff: bool) -> None:
        try:
            demo_upstream_validate(base_url=base_url)
        except ValidationError as err:
            raise CommandError(f"invalid --base-url {base_url!r}: {'; '.join(err.messages)}") from err
        if create_staff and not settings.DEBUG:
            raise CommandError("a demo staff user with a known password is only created with DEBUG=true")

    def _setup(self, base_url: str, *, create_staff: bool) -> None:
        with transaction.atomic():
            row, created = demo_upstream_ensure(base_url=base_url)
        self.stdout.write(f"Upstream {DEMO_UPSTREAM!r} {'created' if created else 'uses'} {row.base_url} "
                          f"(breaker opens after {row.breaker_fail_max} failures, probes after "
                          f"{row.breaker_reset_timeout:g} s; edit it in the admin)")
        if create_staff:
            if demo_staff_ensure():
                self.stdout.write(self.style.WARNING("Created staff user admin / admin for this local demo "
                                                     "(DEBUG only; never in production)."))
            else:
                self.stdout.write("Staff user 'admin' exists: log in with its password.")

    def _advise(self) -> None:
        """The advisor's findings and open suggestions for the demo upstream (manage.py advise demo)."""
        call_log_flush()
        report = advisor_run(names=[DEMO_UPSTREAM])
        self.stdout.write(self.style.MIGRATE_HEADING(
            f"Advisor: {len(report['findings'])} finding(s), "
            f"{sum(s.status == 'open' for s in report['suggestions'])} open suggestion(s) "
            f"(manage.py advise demo)"))
        for finding in report["findings"]:
            self.stdout.write(f"  [{finding.severity}] {finding.kind}: {finding.title}")
        for row in report["suggestions"]:
            self.stdout.write(f"  suggestion #{row.pk} [{row.status}]: {row.field} {row.from_value!r} -> "
                              f"{row.to_value!r}: {row.expected}")

    def _drive(self, options: dict[str, Any]) -> None:
        colours = {"closed": self.style.SUCCESS, "open": self.style.ERROR, "half-open": self.style.WARNING}

        advise_every = options["advise_every"]
        advised = [0.0]

        def report(tick: Tick) -> None:
            breaker = colours.get(tick.breaker, str)(f"{tick.breaker:<9}")
            self.stdout.write(f"{tick.elapsed:>6.1f}s  {tick.calls:>5}  {tick.ok:>4}  {tick.cached:>6}  "
                              f"{tick.errors:>6}  {tick.rejected:>8}  {breaker}  {tick.phase}")
            if advise_every > 0 and tick.elapsed - advised[0] >= advise_every:
                advised[0] = tick.elapsed
                self._advise()

        until = f"for {options['duration']:g} s" if options["duration"] else "until Ctrl-C"
        self.stdout.write(f"Driving traffic through upstream({DEMO_UPSTREAM!r}) with {options['threads']} "
                          f"threads {until}.")
        self.stdout.write(self.style.MIGRATE_HEADING(HEADER))
        totals = demo_traffic_run(report=report, duration=options["duration"], threads=options["threads"],
                                  interval=options["interval"])
        self.stdout.write(self.style.SUCCESS(
            f"Done: {sum(totals.values())} calls ({totals['ok']} ok, {totals['cached']} cached, "
            f"{totals['errors']} errors, {totals['rejected']} rejected by the open breaker)."))
