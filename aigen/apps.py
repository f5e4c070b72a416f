from django.apps import AppConfig


class AigenConfig(AppConfig):
    name = "aigen"
    verbose_name = "AI generation"
    default_auto_field = "django.db.models.BigAutoField"
