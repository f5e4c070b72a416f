"""Who may do what through the APIs: the same model permissions the admin
asks for the same page or button, in one place.

The admin lets a user in when they are active and staff, and then asks a
model permission for each page, button and action: viewing an upstream needs
`resilience.view_upstream`, its Reset breaker / Probe / Clear cache buttons
need `resilience.change_upstream`, and so on. Each class here is one such
rule for DRF views (`permission_classes = [UpstreamOperate]`), and
`admin_allows()` is the same test for code that checks by hand (a view with
several methods, an admin action, a view outside DRF). The map:

| class | permissions | for |
|---|---|---|
| `UpstreamRead` | view_upstream | policies, live state, statistics |
| `UpstreamOperate` | change_upstream | breaker reset, probe, cache clear, benchmarks (the admin buttons) |
| `CallLogRead` | view_calllog | every caller's call logs (without it: one's own, resilience.ops.views) |
| `SuggestionRead` | view_suggestion | findings and suggestions |
| `SuggestionDecide` | change_suggestion | dismiss |
| `SuggestionApply` | change_suggestion + change_upstream | apply and roll back (they change a policy) |
| `JobRead` | view_job | a benchmark's status and report |

A refusal is DRF's: 401 without credentials, 403 `permission_denied` with
them. A non-staff user never passes, whatever permissions it holds: the
admin would not let it in either. The dashboard pages (staff sessions) ask
the same with Django's `permission_required` (`DASHBOARD_READ`).
"""
from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission

UPSTREAM_VIEW = "resilience.view_upstream"
UPSTREAM_CHANGE = "resilience.change_upstream"
CALLLOG_VIEW = "resilience.view_calllog"
SUGGESTION_VIEW = "resilience.view_suggestion"
SUGGESTION_CHANGE = "resilience.change_suggestion"
JOB_VIEW = "resilience.view_job"
DEADLETTER_CHANGE = "resilience.change_deadletter"
#: The dashboards show policies, statistics and call-log failures.
DASHBOARD_READ = (UPSTREAM_VIEW, CALLLOG_VIEW)


def admin_allows(user: Any, *perms: str) -> bool:
    """Whether the admin would let `user` do what needs every one of `perms`."""
    return bool(user is not None and user.is_authenticated and user.is_active and user.is_staff
                and user.has_perms(perms))


class AdminPermission(BasePermission):
    """A DRF permission granted when `admin_allows(user, *perms)`; subclass
    with `perms` set (or use `admin_permission()`)."""

    perms: tuple[str, ...] = ()
    message = "You do not have permission to perform this action."

    def has_permission(self, request: Any, view: Any) -> bool:
        return admin_allows(request.user, *self.perms)


def admin_permission(name: str, *perms: str) -> type[AdminPermission]:
    """A named `AdminPermission` for `perms` (for a rule not listed here)."""
    return type(name, (AdminPermission,), {"perms": perms, "__module__": __name__})


UpstreamRead = admin_permission("UpstreamRead", UPSTREAM_VIEW)
UpstreamOperate = admin_permission("UpstreamOperate", UPSTREAM_CHANGE)
CallLogRead = admin_permission("CallLogRead", CALLLOG_VIEW)
SuggestionRead = admin_permission("SuggestionRead", SUGGESTION_VIEW)
SuggestionDecide = admin_permission("SuggestionDecide", SUGGESTION_CHANGE)
SuggestionApply = admin_permission("SuggestionApply", SUGGESTION_CHANGE, UPSTREAM_CHANGE)
JobRead = admin_permission("JobRead", JOB_VIEW)
AlertRead = admin_permission("AlertRead", "resilience.view_alert")
SilenceManage = admin_permission("SilenceManage", "resilience.add_silence")
