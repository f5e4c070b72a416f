from django.apps import AppConfig


class ResilienceConfig(AppConfig):
    name = "resilience"
    verbose_name = "Resilience"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Register system checks, model receivers and the metrics' signal receivers
        # (so management commands count their upstream calls too).
        from resilience import checks, receivers  # noqa: F401
        from resilience.advisor import resources  # noqa: F401  (per-process resource snapshots)
        from resilience.advisor import tasks as advisor_tasks  # noqa: F401  (the scheduled advisor run)
        from resilience.jobs import tasks  # noqa: F401  (registers the built-in jobs)
        from resilience.telemetry import metrics  # noqa: F401
