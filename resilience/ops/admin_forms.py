"""The upstream and endpoint admin forms: list fields as widgets, a reason for
the change, and the credential binding rule.

The JSON list fields of a policy are edited as what they are: methods as
checkboxes, status codes, header names and model names as a comma-separated
tag input that is validated item by item (the model's `clean()` still checks
the whole policy). The reason is not a model field: it is stored as the
history row's `history_change_reason` (django-simple-history), where the
history page shows it next to the change and its author.

A change that binds a credential to an origin (adds one, moves it to another
scheme, host or port, or sends another variable there) is refused with a
form error unless the user holds `resilience.change_credentials`
(`resilience.models.credential_change_refusal`); when it is allowed, the
history row says so (its change reason) next to who did it. The admin sets
`user` on the form class it builds for each request; the old binding is read
from the database, never from the form's instance (a history revert hands
the form an old version).
"""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from resilience.client.accounts import account_refresh_token_set
from resilience.models import (
    HTTP_METHODS,
    KNOWN_STATUSES,
    Binding,
    Endpoint,
    Upstream,
    binding_of,
    credential_change_refusal,
    credential_moved,
    origin_text,
)

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

    #: The user saving (set by the admin per request); None refuses every credential move.
    user: Any = None

    class Meta:
        model = Upstream
        fields = "__all__"

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if not cleaned.get("base_url"):
            return cleaned  # refused already, for its own reason
        stored = Upstream.objects.filter(pk=self.instance.pk).first() if self.instance.pk else None
        after = binding_of(cleaned["base_url"], cleaned.get("auth_kind") or "",
                           cleaned.get("auth_env_var") or "")
        credential_check(self, stored.credential_binding() if stored else None, after)
        return cleaned


def credential_check(form: forms.ModelForm, before: Binding | None, after: Binding | None) -> None:
    """Refuse the form (a non-field error) when the change binds a credential
    the form's user may not bind; note an allowed move in the instance's
    history change reason."""
    refusal = credential_change_refusal(user=form.user, before=before, after=after)  # type: ignore[attr-defined]
    if refusal:
        raise ValidationError(refusal, code="credential_change_forbidden")
    if credential_moved(before, after):
        origin, variable = after  # type: ignore[misc]
        note = f"credential {variable} bound to {origin_text(origin)}"
        form.instance._change_reason = note[:REASON_MAX_LENGTH]


def _after(first: Callable[[], Any], then: Callable[[], Any]) -> Callable[[], None]:
    def both() -> None:
        first()
        then()
    return both


class EndpointForm(forms.ModelForm):
    """An endpoint, inline on its upstream's page or on its own."""

    base_url = forms.URLField(max_length=500, assume_scheme="https",
                              help_text=Endpoint._meta.get_field("base_url").help_text)
    token_url = forms.URLField(max_length=500, required=False, assume_scheme="https",
                               help_text=Endpoint._meta.get_field("token_url").help_text)
    # Not required: a form posted without it (a script written before the field) keeps OpenAI's format.
    wire_format = forms.ChoiceField(choices=Endpoint.WireFormat.choices, required=False,
                                    initial=Endpoint.WireFormat.OPENAI,
                                    help_text=Endpoint._meta.get_field("wire_format").help_text)
    new_refresh_token = forms.CharField(
        required=False, strip=True, widget=forms.PasswordInput(render_value=False), help_text=(
            "Write-only: a new OAuth2 refresh token for this account (stored encrypted, never shown). "
            "Leave empty to keep the current one."))
    user: Any = None

    def clean_wire_format(self) -> str:
        return self.cleaned_data.get("wire_format") or Endpoint.WireFormat.OPENAI

    class Meta:
        model = Endpoint
        fields = "__all__"

    def save(self, commit: bool = True) -> Any:
        endpoint = super().save(commit=commit)
        token = self.cleaned_data.get("new_refresh_token")
        if token:
            if commit:
                account_refresh_token_set(endpoint=endpoint, refresh_token=token)
            else:  # an inline formset saves the row later
                self.save_m2m = _after(self.save_m2m, lambda: account_refresh_token_set(
                    endpoint=endpoint, refresh_token=token))
        return endpoint

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        upstream = cleaned.get("upstream") or getattr(self.instance, "upstream", None)
        if upstream is None or not cleaned.get("base_url"):
            return cleaned  # refused already, for its own reason
        stored = (Endpoint.objects.select_related("upstream").filter(pk=self.instance.pk).first()
                  if self.instance.pk else None)
        before = None
        if stored is not None:
            # Under the same upstream, judged against the upstream as it is being saved:
            # inline, the upstream's own form judges what its change does to every endpoint.
            before = (stored.credential_binding(upstream) if stored.upstream_id == upstream.pk
                      else stored.credential_binding())
        after = binding_of(cleaned["base_url"], upstream.auth_kind,
                           cleaned.get("auth_env_var") or upstream.auth_env_var)
        credential_check(self, before, after)
        return cleaned
