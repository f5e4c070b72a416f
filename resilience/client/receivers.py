"""Signal receivers: a saved or deleted policy reaches every worker; a
breaker transition is recorded (queued, written off the request path);
health changes are logged once each; clearing the `http` cache namespace
empties this process's near caches. Connected once, from AppConfig.ready."""
from __future__ import annotations

import logging
from typing import Any

from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from django.utils import timezone

from resilience.client.live import policy_changed
from resilience.client.registry import near_caches_clear
from resilience.models import Endpoint, Upstream
from resilience.signals import breaker_state_changed, cache_cleared, health_changed
from resilience.telemetry.calllog import breaker_event_record

logger = logging.getLogger(__name__)


@receiver(post_save, sender=Upstream)
@receiver(post_delete, sender=Upstream)
def upstream_policy_changed(sender: type, instance: Upstream, **kwargs: Any) -> None:
    # After commit: a worker that reloads must see the new row.
    transaction.on_commit(lambda: policy_changed(instance.name))


@receiver(post_save, sender=Endpoint)
@receiver(post_delete, sender=Endpoint)
def endpoint_changed(sender: type, instance: Endpoint, **kwargs: Any) -> None:
    """An endpoint is part of its upstream's policy: the upstream's stamp
    moves (workers without a shared cache compare it) and its version bumps."""
    Upstream.objects.filter(pk=instance.upstream_id).update(updated_at=timezone.now())
    name = Upstream.objects.filter(pk=instance.upstream_id).values_list("name", flat=True).first()
    if name is not None:
        transaction.on_commit(lambda: policy_changed(name))


@receiver(breaker_state_changed, dispatch_uid="resilience.client.receivers.breaker_event")
def breaker_event(sender: Any, *, upstream: str, old: str, new: str, reason: str = "", **kwargs: Any) -> None:
    # An endpoint's breaker is named "<upstream>/<endpoint>": the row counts for its upstream.
    name, _, endpoint = upstream.partition("/")
    if endpoint:
        reason = f"endpoint {endpoint}: {reason}"
    breaker_event_record({"created_at": timezone.now(), "upstream": name, "from_state": old,
                          "to_state": new, "reason": reason[:200]})


@receiver(health_changed)
def upstream_health_logged(sender: Any, upstream: str, old: str | None, new: str, **kwargs: Any) -> None:
    """One log line per health change (the probe history keeps the detail)."""
    log = logger.warning if new == "unhealthy" else logger.info
    log("upstream %s health: %s -> %s", upstream, old or "unknown", new)


@receiver(cache_cleared, dispatch_uid="resilience.client.receivers.near_caches")
def http_cache_cleared(sender: Any, *, namespace: str, **kwargs: Any) -> None:
    # The near caches hold `http` answers in process: they go with the shared ones.
    if namespace == "http":
        near_caches_clear()
