"""AI text generation from templates, through the resilient upstream client."""
from django.apps import AppConfig


class AigenConfig(AppConfig):
    name = "aigen"
    verbose_name = "AI generation"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from aigen import checks  # noqa: F401  (registers the system checks)
        from aigen.providers import provider_announce

        provider_announce()
