"""Model signal receivers: a saved or deleted policy reaches every worker."""
from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from resilience.models import Upstream


@receiver(post_save, sender=Upstream)
@receiver(post_delete, sender=Upstream)
def upstream_policy_changed(sender: type, instance: Upstream, **kwargs: Any) -> None:
    from resilience.client import policy_changed

    # After commit: a worker that reloads must see the new row.
    transaction.on_commit(lambda: policy_changed(instance.name))
