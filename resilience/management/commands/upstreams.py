"""`manage.py upstreams`: every upstream's breaker and statistics as a table,
then the endpoints of upstreams that have several (state, weight, score,
error rate, p95 over the last 5 minutes), then the OAuth2 accounts (state,
expiry, last refresh, failure reason; never a token)."""
from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from resilience.client.accounts import account_state
from resilience.client.endpoints import snapshot
from resilience.models import Endpoint, Upstream
from resilience.telemetry.calllog import call_log_flush
from resilience.telemetry.selectors import WINDOWS, breaker_status, upstream_stats

COLUMNS = ("upstream", "breaker", "calls", "err%", "p50ms", "p95ms", "p99ms", "hit%", "retries", "trips")
ACCOUNT_COLUMNS = ("account", "state", "expires", "last refresh", "refreshes", "failure")
ENDPOINT_COLUMNS = ("endpoint", "state", "weight", "prio", "score", "calls", "err%", "p95ms", "cooling")


def _fmt(value: Any) -> str:
    return "-" if value is None else str(value)


class Command(BaseCommand):
    help = "Show each upstream's breaker state and call statistics over a window."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--window", default="1h", help=f"one of {', '.join(WINDOWS)} (default 1h)")

    def handle(self, *args: Any, **options: Any) -> None:
        window = WINDOWS.get(options["window"])
        if window is None:
            raise CommandError(f"unknown window {options['window']!r}; use one of {', '.join(WINDOWS)}")
        call_log_flush()
        rows = [COLUMNS]
        for upstream in Upstream.objects.all():
            s = upstream_stats(name=upstream.name, window=window)
            rows.append((upstream.name + ("" if upstream.enabled else " (disabled)"),
                         breaker_status(upstream)["state"], s["calls"],
                         f"{s['error_rate'] * 100:.1f}", _fmt(s["p50_ms"]), _fmt(s["p95_ms"]),
                         _fmt(s["p99_ms"]), f"{s['cache_hit_rate'] * 100:.1f}", s["retries"],
                         s["breaker_trips"]))
        if len(rows) == 1:
            self.stdout.write("no upstreams configured (see the admin, or manage.py seed_upstreams)")
            return
        self._table(rows)
        endpoint_rows: list[tuple[Any, ...]] = [ENDPOINT_COLUMNS]
        for upstream in Upstream.objects.filter(endpoints__isnull=False).distinct():
            for e in snapshot(upstream)["endpoints"]:
                endpoint_rows.append((
                    f"{upstream.name}/{e['name']}", e["state"], e["weight"], e["priority"], _fmt(e["score"]),
                    e["calls"], f"{e['error_rate'] * 100:.1f}", _fmt(e["p95_ms"]),
                    f"{e['cooling_for']:.0f}s" if e["cooling_for"] else "-"))
        if len(endpoint_rows) > 1:
            self.stdout.write("")
            self._table(endpoint_rows)
        self._accounts()

    def _accounts(self) -> None:
        """OAuth2 accounts: state, expiry, last refresh, failure reason (never a token)."""
        rows: list[tuple[Any, ...]] = [ACCOUNT_COLUMNS]
        for endpoint in Endpoint.objects.exclude(credential_kind=Endpoint.CredentialKind.ENV).select_related(
                "upstream").order_by("upstream__name", "name"):
            state = account_state(endpoint)
            if state is None:
                continue
            rows.append((f"{endpoint.upstream.name}/{endpoint.name}",
                         "NEEDS NEW REFRESH TOKEN" if state["needs_new_token"] else state["state"],
                         "-" if state["expires_in"] is None else f"{state['expires_in']:.0f}s",
                         state["last_refresh_at"] or "-", state["refreshes"], state["failure_reason"] or "-"))
        if len(rows) > 1:
            self.stdout.write("")
            self._table(rows)

    def _table(self, rows: list[tuple[Any, ...]]) -> None:
        widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
        for index, row in enumerate(rows):
            line = "  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w)
                             for i, (v, w) in enumerate(zip(row, widths, strict=True)))
            self.stdout.write(self.style.MIGRATE_HEADING(line) if index == 0 else line)
