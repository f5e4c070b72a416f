"""Template context for operators: configuration the running service does not
follow (shown as a banner on the admin index). Evaluated only when a template
uses it, so pages that do not pay nothing."""
from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from django.utils.functional import SimpleLazyObject


def config_warnings(request: HttpRequest) -> dict[str, Any]:
    def build() -> list[str]:
        from aigen.conf import base_url_disagreement

        user = getattr(request, "user", None)
        if user is None or not user.is_staff:
            return []
        disagreement = base_url_disagreement()
        return [disagreement.message] if disagreement else []

    return {"config_warnings": SimpleLazyObject(build)}
