"""AI text generation from templates, through the resilient upstream client."""
from django.apps import AppConfig


class AigenConfig(AppConfig):
    name = "aigen"
    verbose_name = "AI generation"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Registers the system checks. Which provider serves is logged by a
        # starting server (project.startup.announce), not before every command.
        from aigen import checks  # noqa: F401
        from aigen.conf import aigen_settings
        from aigen.edge import receivers  # noqa: F401
        from aigen.models import Generation, UsageLedger
        from resilience.telemetry.retention import PruneTarget, prune_target_register

        # Generation records get retention through resilience's prune (command and job).
        prune_target_register("generations", PruneTarget(
            "generation record", Generation, "created_at", "GENERATION_RETENTION_DAYS",
            settings=aigen_settings))
        prune_target_register("usage", PruneTarget(
            "usage ledger row", UsageLedger, "day", "USAGE_RETENTION_DAYS", settings=aigen_settings))
