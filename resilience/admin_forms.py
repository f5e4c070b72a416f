"""The upstream admin form: list fields as widgets, and a reason for the change.

The JSON list fields of a policy are edited as what they are: methods as
checkboxes, status codes, header names and model names as a comma-separated
tag input that is validated item by item (the model's `clean()` still checks
the whole policy). The reason is not a model field: it is stored as the
history row's `history_change_reason` (django-simple-history), where the
history page shows it next to the change and its author.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from resilience.models import HTTP_METHODS, KNOWN_STATUSES, Upstream

#: django-simple-history's history_change_reason column.
REASON_MAX_LENGTH = 100
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an RFC 9110 token


class TagInput(forms.TextInput):
    """A text input for a list, shown as "a, b, c"."""

    def __init__(self, attrs: dict[str, Any] | None = None) -> None:
        super().__init__({"class": "vTextField rs-tags", "autocomplete": "off", **(attrs or {})})

    def format_value(self, value: Any) -> str | None:
        if isinstance(value, (list, tuple)):
            return ", ".join(str(v) for v in value)
        return super().format_value(value)


class TagListField(forms.Field):
    """A list typed as comma-separated items; each item is converted with
    `item` (which raises ValueError with the message to show) and
    duplicates are dropped, keeping the first."""

    widget = TagInput

    def __init__(self, *, item: Callable[[str], Any], **kwargs: Any) -> None:
        self.item = item
        kwargs.setdefault("required", False)
        super().__init__(**kwargs)

    def prepare_value(self, value: Any) -> Any:
        return ", ".join(str(v) for v in value) if isinstance(value, (list, tuple)) else value

    def to_python(self, value: Any) -> list[Any]:
        if isinstance(value, list):
            return value
        items: list[Any] = []
        problems: list[str] = []
        for raw in re.split(r"[,\s]+", (value or "").strip()):
            if not raw:
                continue
            try:
                converted = self.item(raw)
            except ValueError as err:
                problems.append(f"{raw!r}: {err}")
                continue
            if converted not in items:
                items.append(converted)
        if problems:
            raise ValidationError("; ".join(problems))
        return items


def error_status(raw: str) -> int:
    try:
        status = int(raw)
    except ValueError:
        raise ValueError("not a number") from None
    if status < 400 or status not in KNOWN_STATUSES:
        raise ValueError("not an HTTP error status (4xx or 5xx)")
    return status


def header_name(raw: str) -> str:
    if not HEADER_NAME.match(raw):
        raise ValueError("not a header name")
    if raw.lower() in ("authorization", "cookie", "proxy-authorization"):
        raise ValueError("credentials never go into a cache key")
    return raw


def model_name(raw: str) -> str:
    return raw


METHOD_CHOICES = [(m, m) for m in HTTP_METHODS]


class MethodsField(forms.MultipleChoiceField):
    widget = forms.CheckboxSelectMultiple(attrs={"class": "rs-checks"})

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(choices=METHOD_CHOICES, required=False, **kwargs)


class UpstreamForm(forms.ModelForm):
    # A base URL typed without a scheme means https (Django 6's default).
    base_url = forms.URLField(max_length=500, assume_scheme="https",
                              help_text=Upstream._meta.get_field("base_url").help_text)
    retry_statuses = TagListField(item=error_status, help_text=(
        "Status codes that are retried, separated by commas, e.g. 429, 502, 503, 504."))
    retry_methods = MethodsField(help_text=Upstream._meta.get_field("retry_methods").help_text)
    cache_methods = MethodsField(help_text=Upstream._meta.get_field("cache_methods").help_text)
    cache_vary_headers = TagListField(item=header_name, help_text=(
        "Request headers that are part of the cache key, separated by commas, e.g. Accept-Language."))
    served_models = TagListField(item=model_name, help_text=(
        Upstream._meta.get_field("served_models").help_text.replace("e.g. [\"gpt-4o-mini\"]",
                                                                    "separated by commas")))
    change_reason = forms.CharField(
        label="Reason for change", max_length=REASON_MAX_LENGTH, required=False,
        widget=forms.TextInput(attrs={"class": "vTextField",
                                      "placeholder": "why this change (kept in history)"}),
        help_text="Kept in this policy's history next to the change and its author.")

    class Meta:
        model = Upstream
        fields = "__all__"
