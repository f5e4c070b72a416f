"""Signal receivers: an API token deleted (revoked, replaced) or changed, or
a user saved (deactivated) or deleted, makes every worker forget the token
users it keeps (aigen.edge.tokens). A user changed by a queryset `update()` sends
no signal: deactivate users with `save()` (as the admin does)."""
from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from aigen.edge.tokens import tokens_changed, users
from aigen.models import ApiToken


@receiver(post_save, sender=ApiToken, dispatch_uid="aigen.edge.receivers.token_saved")
@receiver(post_delete, sender=ApiToken, dispatch_uid="aigen.edge.receivers.token_deleted")
def token_changed(sender: type, instance: ApiToken, created: bool = False, **kwargs: Any) -> None:
    if created:
        return  # a new token invalidates nothing kept (misses are not kept)
    users.clear()  # this process at once (this transaction sees the change already)
    # The others after commit: a worker that reloads must not read the old row.
    transaction.on_commit(tokens_changed)


@receiver(post_save, sender=get_user_model(), dispatch_uid="aigen.edge.receivers.user_saved")
def user_saved(sender: type, instance: Any, update_fields: Any = None, **kwargs: Any) -> None:
    # A login saves only last_login: nothing a token check reads.
    if update_fields is not None and set(update_fields) <= {"last_login"}:
        return
    users.clear()
    transaction.on_commit(tokens_changed)
