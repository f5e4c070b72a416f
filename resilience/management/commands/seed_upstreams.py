"""`manage.py seed_upstreams`: create the built-in upstream policies and the
default alert rules if missing (`migrate` does it too); `--sync-openai-url`
points the stored `openai` upstream at OPENAI_BASE_URL."""
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from aigen.conf import base_url_disagreement
from resilience.alerts.services import alert_rules_seed
from resilience.exceptions import AppError
from resilience.ops.services import upstream_openai_sync, upstreams_seed


class Command(BaseCommand):
    help = "Create the built-in upstream policies (openai, ...) that do not exist yet."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--sync-openai-url", action="store_true",
                            help="store OPENAI_BASE_URL as the openai upstream's base URL "
                                 "(the stored policy wins otherwise); recorded in its history")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            created = upstreams_seed()
        except ValidationError as err:
            raise CommandError(f"cannot seed the built-in upstreams: {'; '.join(err.messages)}") from err
        if created:
            self.stdout.write(self.style.SUCCESS(f"created: {', '.join(created)}"))
        else:
            self.stdout.write("all built-in upstreams exist")
        rules = alert_rules_seed()  # the default alert rules, when an operator deleted them
        if rules:
            self.stdout.write(self.style.SUCCESS(f"alert rules created: {', '.join(rules)}"))
        if options["sync_openai_url"]:
            try:
                old = upstream_openai_sync(reason="seed_upstreams --sync-openai-url")
            except (AppError, ValidationError) as err:
                raise CommandError(f"cannot store OPENAI_BASE_URL: {err}") from err
            if old is None:
                self.stdout.write("openai upstream already calls OPENAI_BASE_URL's URL")
            else:
                self.stdout.write(self.style.SUCCESS(f"openai upstream: base URL {old} -> OPENAI_BASE_URL"))
        disagreement = base_url_disagreement()
        if disagreement is not None:
            self.stderr.write(self.style.WARNING(disagreement.message))
