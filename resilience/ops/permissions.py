"""Permissions of the operator controls and the alerts: a staff user holding
the model permission the admin asks for the same page or button (staff alone
is not enough), the rule the rest of the API follows.

| class | permission | for |
|---|---|---|
| `UpstreamRead` | view_upstream | breakers' state |
| `UpstreamOperate` | change_upstream | breaker reset and forced opening (the admin's buttons) |
| `AlertRead` | view_alert | alerts and silences |
| `SilenceManage` | add_silence | silencing, ending a silence |
"""
from __future__ import annotations

from typing import Any

from rest_framework.permissions import IsAdminUser


class StaffWithPermission(IsAdminUser):
    """A staff user holding every one of `perms` (subclasses name them)."""

    perms: tuple[str, ...] = ()

    def has_permission(self, request: Any, view: Any) -> bool:
        return super().has_permission(request, view) and request.user.has_perms(self.perms)


class UpstreamRead(StaffWithPermission):
    perms = ("resilience.view_upstream",)


class UpstreamOperate(StaffWithPermission):
    perms = ("resilience.change_upstream",)


class AlertRead(StaffWithPermission):
    perms = ("resilience.view_alert",)


class SilenceManage(StaffWithPermission):
    perms = ("resilience.add_silence",)
