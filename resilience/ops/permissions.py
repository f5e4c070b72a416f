"""Permissions of the operator controls: staff, and explicitly the model
permission the admin needs for the same change (staff alone is not enough)."""
from __future__ import annotations

from typing import Any

from rest_framework.permissions import IsAdminUser


class StaffWithPermission(IsAdminUser):
    """A staff user holding `perm` (subclasses name it)."""

    perm = ""

    def has_permission(self, request: Any, view: Any) -> bool:
        return super().has_permission(request, view) and request.user.has_perm(self.perm)


class CanChangeUpstreams(StaffWithPermission):
    """Breaker controls: what the admin's upstream page needs."""

    perm = "resilience.change_upstream"


class CanChangeAlertRules(StaffWithPermission):
    perm = "resilience.change_alertrule"


class CanManageSilences(StaffWithPermission):
    perm = "resilience.add_silence"
