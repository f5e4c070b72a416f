"""`manage.py seed_upstreams`: create the built-in upstream policies if missing."""
from typing import Any

from django.core.management.base import BaseCommand

from resilience.services import upstreams_seed


class Command(BaseCommand):
    help = "Create the built-in upstream policies (openai, ...) that do not exist yet."

    def handle(self, *args: Any, **options: Any) -> None:
        created = upstreams_seed()
        if created:
            self.stdout.write(self.style.SUCCESS(f"created: {', '.join(created)}"))
        else:
            self.stdout.write("all built-in upstreams exist")
