"""`manage.py breaker NAME [--endpoint E] [--reset | --open SECONDS] [--reason R]`:
show every endpoint's breaker, reset one endpoint's (or, without
--endpoint, every one), or force one open for a while. Changes are recorded
with who made them (`--by`, default the operating-system user)."""
from __future__ import annotations

import getpass
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from resilience.exceptions import AppError
from resilience.ops import services


class Command(BaseCommand):
    help = "Show, reset or force open an upstream's circuit breakers (per endpoint)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("name", help="the upstream")
        parser.add_argument("--endpoint",
                            help="one endpoint (required by --open on an upstream with endpoints)")
        action = parser.add_mutually_exclusive_group()
        action.add_argument("--reset", action="store_true", help="close the breaker(s) now")
        action.add_argument("--open", type=float, metavar="SECONDS",
                            help="force the endpoint's breaker open for SECONDS (then a probe decides)")
        parser.add_argument("--reason", default="", help="kept with the change")
        parser.add_argument("--by", default="", help="who made the change (default: the OS user)")

    def handle(self, *args: Any, **options: Any) -> None:
        name, endpoint, reason = options["name"], options["endpoint"], options["reason"]
        by = options["by"] or f"{getpass.getuser()} (manage.py)"
        try:
            if options["reset"] and endpoint is None:
                state = services.breaker_reset_all(name=name, by=by, reason=reason)
            elif options["reset"]:
                state = services.breaker_endpoint_reset(name=name, endpoint=endpoint, by=by, reason=reason)
            elif options["open"] is not None:
                state = services.breaker_force_open(name=name, endpoint=endpoint, seconds=options["open"],
                                                    by=by, reason=reason)
            else:
                state = services.breakers_state(name=name)
        except AppError as err:
            raise CommandError(err.message) from err
        self.stdout.write(f"{name}: {state['breaker']['state']}")
        for endpoint_state in state["endpoints"]:
            line = f"  {endpoint_state['name'] or '(base URL)'}: {endpoint_state['state']}"
            if endpoint_state["retry_after"] is not None:
                line += f", next probe in {endpoint_state['retry_after']:g}s"
            forced = endpoint_state["forced"]
            if forced:
                why = f": {forced['reason']}" if forced["reason"] else ""
                line += f" (forced open by {forced['by']}{why})"
            if endpoint_state["cooling_for"]:
                line += f", cooling {endpoint_state['cooling_for']:g}s"
            self.stdout.write(line)
