"""Accounts in bulk: `manage.py endpoints_import FILE|-` and
`manage.py endpoints_export` (issue 27), the way an account pool is loaded
from its store.

The file is JSON: `{"upstream": NAME, "accounts": [{"name", "base_url",
"token_url", "client_id", "refresh_token", "kind"?, "weight"?, "priority"?,
"model"?, "client_secret_env"?, "scope"?, "enabled"?, "pool_size"?, "rpm_limit"?,
"tpm_limit"?}, ...]}`.
Endpoints are created or updated by name (each save keeps its history, with
the reason "endpoints_import"); refresh tokens are sealed
(resilience.client.sealing) and never printed. Every entry is validated
before anything is written: a bad file raises `ConfigInvalid` naming the
entry and the field, and nothing changes. A name may appear once in the
file, and not as an endpoint of another upstream: an account's name is one
account, and two pools refreshing it would spend its rotating refresh token
twice (the provider then revokes it).

The export writes the same shape without a secret (no refresh token; the
client secret only by its variable).

Only `manage.py` (operator level) imports; nothing on the HTTP surface
does. Exposed there, it would need the permission the admin and the API ask
to bind a credential to an origin (`resilience.change_credentials`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction

from resilience import exceptions as errors
from resilience.cache import default_cache
from resilience.client import sealing
from resilience.client.accounts import account_refresh_token_set
from resilience.models import Account, Endpoint, Upstream

KINDS = {"oauth2_refresh", "oauth2_client", "env"}
#: Keys of an entry and the endpoint field each sets ("refresh_token" is stored apart).
FIELDS = {"name": "name", "base_url": "base_url", "token_url": "token_url", "client_id": "client_id",
          "kind": "credential_kind", "weight": "weight", "priority": "priority", "model": "model",
          "client_secret_env": "client_secret_env", "scope": "scope", "enabled": "enabled",
          "pool_size": "pool_size", "auth_env_var": "auth_env_var", "rpm_limit": "rpm_limit",
          "tpm_limit": "tpm_limit"}


@dataclass(frozen=True, slots=True)
class Imported:
    created: tuple[str, ...]
    updated: tuple[str, ...]
    tokens_set: int


def _invalid(where: str, field: str, message: str) -> errors.ConfigInvalid:
    return errors.ConfigInvalid(f"{where}: {field}: {message}", entry=where, field=field)


def _parse(text: str) -> tuple[Upstream, list[dict[str, Any]]]:
    try:
        data = json.loads(text)
    except ValueError as err:
        raise _invalid("file", "-", f"not JSON ({err.msg}, line {err.lineno})") from None
    if not isinstance(data, dict):
        raise _invalid("file", "-", "must be an object with \"upstream\" and \"accounts\"")
    unknown = sorted(set(data) - {"upstream", "accounts"})
    if unknown:
        raise _invalid("file", unknown[0], "unknown key")
    upstream = Upstream.objects.filter(name=str(data.get("upstream") or "")).first()
    if upstream is None:
        raise _invalid("file", "upstream", f"no upstream named {data.get('upstream')!r}")
    entries = data.get("accounts")
    if not isinstance(entries, list) or not entries:
        raise _invalid("file", "accounts", "must be a non-empty list")
    return upstream, entries


def _build(upstream: Upstream, index: int, item: Any, seen: dict[str, int]) -> tuple[Endpoint, bool, str]:
    where = f"accounts[{index}]"
    if not isinstance(item, dict):
        raise _invalid(where, "-", "must be an object")
    where = f"accounts[{index}] ({item.get('name', '?')})"
    unknown = sorted(set(item) - set(FIELDS) - {"refresh_token"})
    if unknown:
        raise _invalid(where, unknown[0], "unknown key")
    for key in ("name", "base_url", "token_url", "client_id"):
        if not item.get(key) and item.get("kind", "oauth2_refresh") != "env":
            raise _invalid(where, key, "required")
    kind = item.get("kind", "oauth2_refresh")
    if kind not in KINDS:
        raise _invalid(where, "kind", f"one of {', '.join(sorted(KINDS))}")
    if item["name"] in seen:
        raise _invalid(where, "name", f"listed twice (also accounts[{seen[item['name']]}])")
    seen[item["name"]] = index
    elsewhere = Endpoint.objects.filter(name=item["name"]).exclude(upstream=upstream).select_related(
        "upstream").first()
    if elsewhere is not None:
        raise _invalid(where, "name", f"already an endpoint of upstream {elsewhere.upstream.name!r}: an "
                       "account name is one account, served by one upstream (two pools refreshing one "
                       "account would spend its rotating refresh token twice)")
    token = item.get("refresh_token", "")
    if not isinstance(token, str):
        raise _invalid(where, "refresh_token", "must be a string")
    endpoint = Endpoint.objects.filter(upstream=upstream, name=item["name"]).first()
    created = endpoint is None
    endpoint = endpoint or Endpoint(upstream=upstream)
    for key, field in FIELDS.items():
        if key in item:
            setattr(endpoint, field, item[key])
    endpoint.credential_kind = kind
    stored = not created and Account.objects.filter(endpoint=endpoint).exclude(
        refresh_token_sealed="").exists()
    if kind == "oauth2_refresh" and not token and not stored:
        raise _invalid(where, "refresh_token", "required for a new refresh-token account")
    try:
        endpoint.full_clean(validate_unique=False)
    except ValidationError as err:
        field, messages = next(iter(err.message_dict.items()))
        key = {v: k for k, v in FIELDS.items()}.get(field, field)
        raise _invalid(where, key, " ".join(messages)) from None
    return endpoint, created, token


def endpoints_import(*, text: str) -> Imported:
    """Create or update the file's accounts (see the module docstring)."""
    upstream, entries = _parse(text)
    sealing.sealer()  # refuse before anything is written when tokens cannot be sealed
    seen: dict[str, int] = {}  # name -> its entry's index
    built = [_build(upstream, index, item, seen) for index, item in enumerate(entries)]
    created, updated, tokens = [], [], 0
    with transaction.atomic():
        for endpoint, is_new, token in built:
            endpoint._change_reason = "endpoints_import"
            endpoint.save()
            (created if is_new else updated).append(endpoint.name)
            if token:
                account_refresh_token_set(endpoint=endpoint, refresh_token=token)
                tokens += 1
    return Imported(tuple(created), tuple(updated), tokens)


def endpoints_export(*, upstream: str) -> str:
    """The upstream's endpoints in the import's shape, without a secret."""
    row = Upstream.objects.filter(name=upstream).first()
    if row is None:
        raise errors.NotFound(f"no upstream named {upstream!r}")
    accounts = []
    for endpoint in row.endpoints.order_by("priority", "name"):
        entry = {key: getattr(endpoint, field) for key, field in FIELDS.items()}
        accounts.append({key: value for key, value in entry.items() if value not in ("", None)})
    return json.dumps({"upstream": row.name, "accounts": accounts}, indent=2) + "\n"


def credentials_rotate() -> int:
    """Re-encrypt every stored token under the first key; the number of
    accounts resealed. The cache's copies are dropped (refilled on use)."""
    count = 0
    with transaction.atomic():
        for account in Account.objects.select_for_update():
            account.refresh_token_sealed = sealing.reseal(account.refresh_token_sealed)
            account.access_token_sealed = sealing.reseal(account.access_token_sealed)
            account.save(update_fields=["refresh_token_sealed", "access_token_sealed", "updated_at"])
            count += 1
    keys = [f"account:{pk}:token" for pk in Account.objects.values_list("endpoint_id", flat=True)]
    default_cache().delete_many(keys)
    return count
