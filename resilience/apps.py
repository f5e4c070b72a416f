from django.apps import AppConfig


class ResilienceConfig(AppConfig):
    name = "resilience"
    verbose_name = "Resilience"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Register system checks, model receivers and the metrics' signal receivers
        # (so management commands count their upstream calls too).
        from django.db.models.signals import post_migrate

        from resilience import checks  # noqa: F401
        from resilience.advisor import resources  # noqa: F401  (per-process resource snapshots)
        from resilience.advisor import tasks as advisor_tasks  # noqa: F401  (the scheduled advisor run)
        from resilience.alerts import tasks as alerts_tasks  # noqa: F401  (the scheduled alert evaluation)
        from resilience.client import receivers  # noqa: F401
        from resilience.jobs import tasks  # noqa: F401  (registers the built-in jobs)
        from resilience.ops import tasks as ops_tasks  # noqa: F401  (the health probes)
        from resilience.ops.services import upstreams_seed_after_migrate
        from resilience.telemetry import metrics  # noqa: F401

        # `migrate` alone leaves a working service: the built-in upstreams exist.
        post_migrate.connect(upstreams_seed_after_migrate, sender=self,
                             dispatch_uid="resilience.seed_upstreams")
