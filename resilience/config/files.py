"""Export and apply the configuration file (see the package docstring).

The file:

    version: 1
    upstreams:
      - name: openai
        base_url: https://api.openai.com/v1
        auth_kind: bearer
        auth_env_var: OPENAI_API_KEY      # the variable's NAME: secrets are never in the file
        ...                               # every policy field
        endpoints:
          - {name: primary, base_url: ..., auth_env_var: ..., weight: 1, ...}
    alert_rules:
      - {name: success-rate-warning, metric: success_rate, op: "<", threshold: 90, ...}

An entry is the whole truth about its object: a field left out takes the
model's default, an endpoint left out of its upstream's list is deleted.
Upstreams and rules absent from the file are kept unless `prune` is asked
(a file that forgot one must not delete production's).

`config_plan()` validates every entry with the models' own `full_clean()`
(every rule the admin enforces) and computes the diff; `config_apply()`
writes it in one transaction, each saved or deleted object carrying the
reason in its history (django-simple-history), so an applied file can be
reverted from the admin like any edit.

On failure: a file that is not YAML, has an unknown key, a bad value or a
duplicate name raises `ConfigInvalid` naming the entry (`upstreams[1]
(openai)`) and the field, before anything is written; an error while
writing rolls the whole transaction back. Either way nothing changes.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import yaml
from django.core.exceptions import ValidationError
from django.db import models, transaction

from resilience.alerts.models import AlertRule
from resilience.exceptions import ConfigInvalid
from resilience.models import Endpoint, Upstream

logger = logging.getLogger(__name__)

VERSION = 1
_SKIP = {"id", "created_at", "updated_at", "upstream"}


def _fields(model: type[models.Model]) -> list[str]:
    return [f.name for f in model._meta.concrete_fields if f.name not in _SKIP]


UPSTREAM_FIELDS = _fields(Upstream)
ENDPOINT_FIELDS = _fields(Endpoint)
RULE_FIELDS = _fields(AlertRule)


# -- export ------------------------------------------------------------------------------------
def _values(obj: models.Model, names: list[str]) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in names}


def config_document() -> dict[str, Any]:
    """Every upstream (with its endpoints) and every alert rule, as the file's mapping."""
    upstreams = []
    for upstream in Upstream.objects.order_by("name").prefetch_related("endpoints"):
        entry = _values(upstream, UPSTREAM_FIELDS)
        entry["endpoints"] = [_values(e, ENDPOINT_FIELDS) for e in sorted(upstream.endpoints.all(),
                                                                          key=lambda e: e.name)]
        upstreams.append(entry)
    rules = [_values(rule, RULE_FIELDS) for rule in AlertRule.objects.order_by("name")]
    return {"version": VERSION, "upstreams": upstreams, "alert_rules": rules}


def config_export() -> str:
    """The configuration as YAML text (credentials only by their variable's name)."""
    header = "# Resilience gateway configuration: manage.py config_apply FILE [--dry-run]\n"
    return header + yaml.safe_dump(config_document(), sort_keys=False, allow_unicode=True, width=110)


# -- plan --------------------------------------------------------------------------------------
@dataclass
class Change:
    """One object to create, update or delete; `fields`: name -> (old, new)."""

    kind: str  # upstream, endpoint, alert_rule
    key: str
    action: str  # create, update, delete
    fields: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    obj: Any = None

    def lines(self) -> list[str]:
        sign = {"create": "+", "update": "~", "delete": "-"}[self.action]
        head = f"{sign} {self.kind} {self.key}"
        if self.action == "delete":
            return [head]
        if self.action == "create":
            return [head] + [f"    {name}: {new!r}" for name, (_, new) in self.fields.items()]
        return [head] + [f"    {name}: {old!r} -> {new!r}" for name, (old, new) in self.fields.items()]


@dataclass
class Plan:
    changes: list[Change]
    kept: list[str]  # objects absent from the file, left alone (no prune)

    def text(self) -> str:
        lines = [line for change in self.changes for line in change.lines()]
        lines += [f"  {name}: not in the file, kept (--prune deletes it)" for name in self.kept]
        return "\n".join(lines) if lines else "no changes"


def _invalid(entry: str, field_name: str | None, problem: str) -> ConfigInvalid:
    where = f"{entry}.{field_name}" if field_name else entry
    return ConfigInvalid(f"{where}: {problem}", entry=entry, field=field_name)


def _entries(document: dict[str, Any], key: str) -> list[tuple[str, dict[str, Any]]]:
    items = document.get(key) or []
    if not isinstance(items, list):
        raise _invalid(key, None, "must be a list")
    named: list[tuple[str, dict[str, Any]]] = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        entry = f"{key}[{index}]"
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
            raise _invalid(entry, "name", "each entry is a mapping with a name")
        if item["name"] in seen:
            raise _invalid(f"{entry} ({item['name']})", "name", "the same name appears twice")
        seen.add(item["name"])
        named.append((f"{entry} ({item['name']})", item))
    return named


def _same(model_field: str, old: Any, new: Any) -> bool:
    if model_field == "base_url" and isinstance(old, str) and isinstance(new, str):
        return old.rstrip("/") == new.rstrip("/")
    return old == new


def _build(model: type[models.Model], names: list[str], entry: str, item: dict[str, Any],
           existing: models.Model | None, *, extra: dict[str, Any] | None = None,
           exclude: list[str] | None = None) -> tuple[models.Model, dict[str, tuple[Any, Any]]]:
    """A validated instance for `item` (defaults for missing fields) and what differs from `existing`."""
    unknown = sorted(set(item) - set(names) - {"endpoints"})
    if unknown:
        raise _invalid(entry, unknown[0], f"unknown field (known: {', '.join(names)})")
    obj = model(**{name: item[name] for name in names if name in item}, **(extra or {}))
    if existing is not None:
        obj.pk = existing.pk
        obj._state.adding = False  # an update: unique checks exclude this row itself
    try:
        obj.full_clean(exclude=exclude)
    except ValidationError as err:
        problems = err.message_dict if hasattr(err, "error_dict") else {"": err.messages}
        name, messages = next(iter(problems.items()))
        raise _invalid(entry, None if name in ("", "__all__") else name, " ".join(messages)) from None
    if existing is None:
        return obj, {name: (None, getattr(obj, name)) for name in names}
    changed = {name: (getattr(existing, name), getattr(obj, name)) for name in names
               if not _same(name, getattr(existing, name), getattr(obj, name))}
    return obj, changed


def config_plan(document: Any, *, prune: bool = False) -> Plan:
    """Validate `document` (the parsed file) and compute what applying it changes."""
    if not isinstance(document, dict):
        raise _invalid("file", None, "the top level must be a mapping with version, upstreams, alert_rules")
    unknown = sorted(set(document) - {"version", "upstreams", "alert_rules"})
    if unknown:
        raise _invalid("file", unknown[0], "unknown key (known: version, upstreams, alert_rules)")
    if document.get("version", VERSION) != VERSION:
        raise _invalid("file", "version", f"this server reads version {VERSION}")
    changes: list[Change] = []
    deletions: list[Change] = []
    existing_upstreams = {u.name: u for u in Upstream.objects.prefetch_related("endpoints")}
    upstream_entries = _entries(document, "upstreams")
    for entry, item in upstream_entries:
        existing = existing_upstreams.get(item["name"])
        obj, changed = _build(Upstream, UPSTREAM_FIELDS, entry, item, existing)
        if existing is None:
            changes.append(Change("upstream", obj.name, "create", changed, obj))
        elif changed:
            obj.created_at = existing.created_at
            changes.append(Change("upstream", obj.name, "update", changed, obj))
        old_endpoints = {e.name: e for e in existing.endpoints.all()} if existing is not None else {}
        endpoints = item.get("endpoints") or []
        if not isinstance(endpoints, list):
            raise _invalid(entry, "endpoints", "must be a list")
        for endpoint_entry, endpoint_item in _entries({"endpoints": endpoints}, "endpoints"):
            where = f"{entry}.{endpoint_entry}"
            old = old_endpoints.pop(endpoint_item["name"], None)
            endpoint, changed = _build(Endpoint, ENDPOINT_FIELDS, where, endpoint_item, old,
                                       exclude=["upstream"])
            key = f"{obj.name}/{endpoint.name}"
            if old is None:
                changes.append(Change("endpoint", key, "create", changed, (obj.name, endpoint)))
            elif changed:
                changes.append(Change("endpoint", key, "update", changed, (obj.name, endpoint)))
        deletions += [Change("endpoint", f"{obj.name}/{name}", "delete", obj=e)
                      for name, e in old_endpoints.items()]
    named = {item["name"] for _, item in upstream_entries}
    absent = [u for name, u in sorted(existing_upstreams.items()) if name not in named]
    existing_rules = {r.name: r for r in AlertRule.objects.all()}
    rule_entries = _entries(document, "alert_rules")
    for entry, item in rule_entries:
        existing = existing_rules.get(item["name"])
        rule, changed = _build(AlertRule, RULE_FIELDS, entry, item, existing)
        if existing is None:
            changes.append(Change("alert_rule", rule.name, "create", changed, rule))
        elif changed:
            rule.created_at = existing.created_at
            changes.append(Change("alert_rule", rule.name, "update", changed, rule))
    ruled = {item["name"] for _, item in rule_entries}
    absent_rules = [r for name, r in sorted(existing_rules.items()) if name not in ruled]
    kept: list[str] = []
    if prune:
        deletions += [Change("upstream", u.name, "delete", obj=u) for u in absent]
        deletions += [Change("alert_rule", r.name, "delete", obj=r) for r in absent_rules]
    else:
        kept = [f"upstream {u.name}" for u in absent] + [f"alert_rule {r.name}" for r in absent_rules]
    return Plan(changes + deletions, kept)


def config_load(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "file"
        raise _invalid("file", None, f"not valid YAML ({where}: {getattr(err, 'problem', err)})") from None


# -- apply -------------------------------------------------------------------------------------
def config_apply(text: str, *, reason: str, dry_run: bool = False, prune: bool = False) -> Plan:
    """Apply the configuration `text` (YAML): the whole diff in one
    transaction, each change recorded in history with `reason`; with
    `dry_run` only the plan. Raises ConfigInvalid (nothing written)."""
    plan = config_plan(config_load(text), prune=prune)
    if dry_run or not plan.changes:
        return plan
    with transaction.atomic():
        saved: dict[str, Upstream] = {}
        for change in plan.changes:
            if change.action == "delete":
                change.obj._change_reason = reason
                change.obj.delete()
            elif change.kind == "endpoint":
                upstream_name, endpoint = change.obj
                upstream = saved.get(upstream_name) or Upstream.objects.get(name=upstream_name)
                endpoint.upstream = upstream
                endpoint._change_reason = reason
                endpoint.save()
            else:
                change.obj._change_reason = reason
                change.obj.save()
                if change.kind == "upstream":
                    saved[change.obj.name] = change.obj
    logger.info("configuration applied (%s): %d change(s)", reason, len(plan.changes))
    return plan
