"""The template registry: templates, their sections, the data each section
requires (and its types), model parameters, cache TTLs and prompt bodies.

The registry is a YAML file (`aigen/templates.yaml`, or `AIGEN["REGISTRY_FILE"]`);
prompt bodies are Django templates under `templates/aigen/`, rendered without
HTML autoescaping (they are prompts, not pages). Each section's `prompt_hash`
covers its prompt and system template sources, so editing a prompt body
changes every cache key built from it.

The registry is loaded once per process (`get_registry()`), and again after
`registry_reset()` or a change of the AIGEN/TEMPLATES settings: a deploy (or a
restart) picks up edited prompts. On failure, `registry_load()` raises
`RegistryError` listing every problem with its location in the file; the
`aigen.E00x` system checks report them at start.
"""
from __future__ import annotations

import hashlib
import math
import re
import threading
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from django.conf import settings
from django.core.signals import setting_changed
from django.template import Engine, Template, TemplateDoesNotExist, TemplateSyntaxError

from aigen.conf import aigen_settings
from aigen.exceptions import InvalidInput, SectionNotFound, TemplateNotFound

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
FIELD_TYPES = ("string", "integer", "number", "boolean", "object", "list")
MODEL_PARAMS = frozenset({"temperature", "top_p", "max_tokens", "max_completion_tokens",
                          "presence_penalty", "frequency_penalty", "seed", "stop"})
DEFAULT_MAX_LENGTH = 5000
DEFAULT_MAX_ITEMS = 100

# Problem codes, reported by the system check as aigen.<code>.
E_FILE, E_SCHEMA, E_PROMPT, E_SAMPLE = "E001", "E002", "E003", "E004"


# -- value objects ----------------------------------------------------------------

@dataclass(frozen=True)
class FieldSpec:
    """One data field a section requires (or accepts, when not `required`)."""

    name: str
    type: str
    required: bool = True
    label: str = ""
    description: str = ""
    max_length: int = DEFAULT_MAX_LENGTH
    min: float | None = None
    max: float | None = None
    max_items: int = DEFAULT_MAX_ITEMS
    fields: tuple[FieldSpec, ...] = ()
    items: FieldSpec | None = None

    def clean(self, value: Any, path: str) -> Any:
        """The canonical value (strings trimmed, integral floats as ints), or
        `InvalidInput` naming `path`. Returns None for an empty optional value."""
        kind = self.type
        if kind == "string":
            if not isinstance(value, str):
                raise InvalidInput(path, "Expected a string.")
            value = unicodedata.normalize("NFC", value.strip())
            if not value:
                if self.required:
                    raise InvalidInput(path, "This field may not be blank.")
                return None
            if len(value) > self.max_length:
                raise InvalidInput(path, f"At most {self.max_length} characters.")
            return value
        if kind == "integer":
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidInput(path, "Expected an integer.")
            return self._in_range(value, path)
        if kind == "number":
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise InvalidInput(path, "Expected a number.")
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            return self._in_range(value, path)
        if kind == "boolean":
            if not isinstance(value, bool):
                raise InvalidInput(path, "Expected true or false.")
            return value
        if kind == "list":
            if not isinstance(value, list):
                raise InvalidInput(path, "Expected a list.")
            if len(value) > self.max_items:
                raise InvalidInput(path, f"At most {self.max_items} items.")
            assert self.items is not None
            cleaned = []
            for index, item in enumerate(value):
                item_path = f"{path}[{index}]"
                if item is None:
                    raise InvalidInput(item_path, "This item may not be null.")
                item = self.items.clean(item, item_path)
                if item is None:
                    raise InvalidInput(item_path, "This item may not be blank.")
                cleaned.append(item)
            if not cleaned:
                if self.required:
                    raise InvalidInput(path, "This list may not be empty.")
                return None
            return cleaned
        return clean_object(self.fields, value, path)

    def _in_range(self, value: float, path: str) -> float:
        if self.min is not None and value < self.min:
            raise InvalidInput(path, f"Must be at least {_num(self.min)}.")
        if self.max is not None and value > self.max:
            raise InvalidInput(path, f"Must be at most {_num(self.max)}.")
        return value

    def describe(self) -> dict[str, Any]:
        """The field as the API shows it."""
        out: dict[str, Any] = {"type": self.type, "required": self.required}
        if self.label:
            out["label"] = self.label
        if self.description:
            out["description"] = self.description
        if self.type == "string":
            out["max_length"] = self.max_length
        if self.min is not None:
            out["min"] = _num(self.min)
        if self.max is not None:
            out["max"] = _num(self.max)
        if self.type == "object":
            out["fields"] = {f.name: f.describe() for f in self.fields}
        if self.type == "list" and self.items is not None:
            out["max_items"] = self.max_items
            out["items"] = self.items.describe()
        return out


def _num(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def clean_object(fields: tuple[FieldSpec, ...], value: Any, path: str) -> dict[str, Any]:
    """Validate a JSON object against `fields`: declared fields only (others are
    dropped, so they never split the cache), in declaration order."""
    if not isinstance(value, dict):
        raise InvalidInput(path, "Expected an object.")
    cleaned: dict[str, Any] = {}
    for spec in fields:
        sub = f"{path}.{spec.name}"
        raw = value.get(spec.name)
        result = None if raw is None else spec.clean(raw, sub)
        if result is None:
            if spec.required:
                raise InvalidInput(sub, "This field is required.")
            continue
        cleaned[spec.name] = result
    return cleaned


def field_labels(fields: tuple[FieldSpec, ...], prefix: str = "") -> dict[str, str]:
    """Dotted path -> label, for the fields that have one (list items share theirs)."""
    labels: dict[str, str] = {}
    for spec in fields:
        name = f"{prefix}{spec.name}"
        if spec.label:
            labels[name] = spec.label
        if spec.type == "object":
            labels.update(field_labels(spec.fields, f"{name}."))
        elif spec.type == "list" and spec.items is not None and spec.items.type == "object":
            labels.update(field_labels(spec.items.fields, f"{name}."))
    return labels


def required_paths(fields: tuple[FieldSpec, ...], prefix: str = "") -> list[str]:
    """Dotted paths of the required fields: `enterprise_info.enterprise_name`."""
    paths: list[str] = []
    for spec in fields:
        if not spec.required:
            continue
        name = f"{prefix}{spec.name}"
        if spec.type == "object" and spec.fields:
            paths.extend(required_paths(spec.fields, f"{name}."))
        elif spec.type == "list" and spec.items is not None and spec.items.type == "object":
            paths.extend(required_paths(spec.items.fields, f"{name}[]."))
        else:
            paths.append(name)
    return paths


@dataclass(frozen=True, eq=False)
class Section:
    """One section of a template: what it needs and how it is prompted."""

    id: str
    title: str
    template_id: str
    template_title: str
    template_version: int
    fields: tuple[FieldSpec, ...]
    params: Mapping[str, Any]
    cache_ttl: int
    prompt_name: str
    prompt: Template
    system: Template | None
    prompt_hash: str
    description: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)

    def clean(self, data: Any) -> dict[str, Any]:
        """The canonical data for this section, or `InvalidInput`."""
        return clean_object(self.fields, data, "data")

    def messages(self, data: dict[str, Any]) -> list[dict[str, str]]:
        """The chat messages for cleaned `data`: the system prompt, then the section's."""
        from django.template import Context

        context = Context({**data, "data": data, "section": self, "template_title": self.template_title},
                          autoescape=False)
        messages = []
        if self.system is not None:
            messages.append({"role": "system", "content": self.system.render(context).strip()})
        messages.append({"role": "user", "content": self.prompt.render(context).strip()})
        return messages

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "description": self.description,
            "required_fields": required_paths(self.fields),
            "fields": {f.name: f.describe() for f in self.fields},
            "cache_ttl": self.cache_ttl,
        }


@dataclass(frozen=True, eq=False)
class TemplateSpec:
    id: str
    title: str
    version: int
    description: str
    sections: Mapping[str, Section]
    sample_data: Mapping[str, Any]

    def section(self, section_id: str) -> Section:
        try:
            return self.sections[section_id]
        except KeyError:
            raise SectionNotFound(self.id, section_id, list(self.sections)) from None

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "version": self.version,
            "description": self.description,
            "sections": [s.describe() for s in self.sections.values()],
            "sample_data": self.sample_data,
        }


@dataclass(frozen=True, eq=False)
class Registry:
    path: Path
    templates: Mapping[str, TemplateSpec]

    def template(self, template_id: str) -> TemplateSpec:
        try:
            return self.templates[template_id]
        except KeyError:
            raise TemplateNotFound(template_id) from None

    def section(self, template_id: str, section_id: str) -> Section:
        return self.template(template_id).section(section_id)


@dataclass(frozen=True)
class Problem:
    code: str
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message


class RegistryError(Exception):
    """The registry file is missing, unreadable or invalid; `problems` lists why."""

    def __init__(self, path: Path, problems: list[Problem]) -> None:
        self.path = path
        self.problems = problems
        listed = "; ".join(str(p) for p in problems)
        super().__init__(f"{display_path(path)}: {listed}")


def display_path(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(settings.BASE_DIR).resolve()))
    except (ValueError, AttributeError):
        return str(path)


# -- loading -------------------------------------------------------------------------

def prompt_engine() -> Engine:
    """A template engine over the project's template folders, without autoescape."""
    dirs: list[Any] = []
    for conf in settings.TEMPLATES:
        if conf.get("BACKEND") == "django.template.backends.django.DjangoTemplates":
            dirs.extend(conf.get("DIRS", []))
    return Engine(dirs=dirs, app_dirs=True, autoescape=False)


@dataclass(frozen=True)
class _TemplateHead:
    """A template's own values, as its sections inherit them."""

    id: str
    title: str
    version: int
    cache_ttl: int
    params: dict[str, Any]
    system: Template | None


@dataclass
class _Loader:
    engine: Engine
    problems: list[Problem] = field(default_factory=list)

    def problem(self, code: str, where: str, message: str) -> None:
        self.problems.append(Problem(code, where, message))

    # -- fields ---------------------------------------------------------------------
    def fields(self, raw: Any, where: str) -> tuple[FieldSpec, ...]:
        if raw is None:
            return ()
        if not isinstance(raw, dict):
            self.problem(E_SCHEMA, where, "expected a mapping of field name to type")
            return ()
        specs = []
        for name, spec in raw.items():
            if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                self.problem(E_SCHEMA, where, f"invalid field name {name!r}")
                continue
            parsed = self.field(name, spec, f"{where}.{name}")
            if parsed is not None:
                specs.append(parsed)
        return tuple(specs)

    def field(self, name: str, raw: Any, where: str) -> FieldSpec | None:
        if isinstance(raw, str):
            raw = {"type": raw}
        if not isinstance(raw, dict):
            self.problem(E_SCHEMA, where, "expected a type name or a mapping with 'type'")
            return None
        known = {"type", "required", "label", "description", "max_length", "min", "max",
                 "max_items", "fields", "items"}
        for key in raw:
            if key not in known:
                self.problem(E_SCHEMA, where, f"unknown key {key!r} (known: {', '.join(sorted(known))})")
        kind = raw.get("type")
        if kind not in FIELD_TYPES:
            self.problem(E_SCHEMA, where, f"unknown type {kind!r} (one of: {', '.join(FIELD_TYPES)})")
            return None
        required = raw.get("required", True)
        if not isinstance(required, bool):
            self.problem(E_SCHEMA, where, "'required' must be true or false")
            required = True
        numbers = {}
        for key in ("min", "max"):
            value = raw.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                self.problem(E_SCHEMA, where, f"'{key}' must be a number")
                value = None
            numbers[key] = value
        limits = {}
        for key, default in (("max_length", DEFAULT_MAX_LENGTH), ("max_items", DEFAULT_MAX_ITEMS)):
            value = raw.get(key, default)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                self.problem(E_SCHEMA, where, f"'{key}' must be a positive integer")
                value = default
            limits[key] = value
        subfields: tuple[FieldSpec, ...] = ()
        items = None
        if kind == "object":
            subfields = self.fields(raw.get("fields"), f"{where}.fields")
            if not subfields:
                self.problem(E_SCHEMA, where, "an object needs 'fields'")
        elif kind == "list":
            if "items" not in raw:
                self.problem(E_SCHEMA, where, "a list needs 'items'")
            else:
                items = self.field("items", raw["items"], f"{where}.items")
            if items is None:
                return None
        return FieldSpec(
            name=name, type=kind, required=required, label=str(raw.get("label") or ""),
            description=str(raw.get("description") or ""), min=numbers["min"], max=numbers["max"],
            fields=subfields, items=items, **limits,
        )

    # -- templates ------------------------------------------------------------------
    def prompt(self, name: Any, where: str) -> Template | None:
        if not isinstance(name, str) or not name:
            self.problem(E_SCHEMA, where, "expected a template path like 'aigen/emergency_plan/1.txt'")
            return None
        try:
            return self.engine.get_template(name)
        except TemplateDoesNotExist:
            self.problem(E_PROMPT, where, f"prompt template {name!r} not found in the template folders")
        except TemplateSyntaxError as err:
            self.problem(E_PROMPT, where, f"prompt template {name!r} does not compile: {err}")
        return None

    def params(self, raw: Any, where: str) -> dict[str, Any]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            self.problem(E_SCHEMA, where, "expected a mapping of model parameters")
            return {}
        unknown = sorted(set(raw) - MODEL_PARAMS)
        if unknown:
            self.problem(E_SCHEMA, where, f"unknown model parameter(s) {unknown} "
                                          f"(known: {', '.join(sorted(MODEL_PARAMS))})")
        return {k: v for k, v in raw.items() if k in MODEL_PARAMS}

    def ttl(self, raw: Any, where: str, default: int) -> int:
        if raw is None:
            return default
        if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
            self.problem(E_SCHEMA, where, "'cache_ttl' must be a positive number of seconds")
            return default
        return raw

    def ident(self, raw: Any, where: str, what: str) -> str | None:
        if isinstance(raw, int) and not isinstance(raw, bool):
            raw = str(raw)
        if not isinstance(raw, str) or not ID_PATTERN.match(raw):
            self.problem(E_SCHEMA, where, f"{what} id {raw!r} must be letters, digits, '_' or '-'")
            return None
        return raw

    def template(self, raw: Any, where: str) -> TemplateSpec | None:
        if not isinstance(raw, dict):
            self.problem(E_SCHEMA, where, "expected a mapping")
            return None
        for key in ("id", "title", "version", "sections", "sample_data"):
            if key not in raw:
                self.problem(E_SCHEMA, where, f"missing {key!r}")
        template_id = self.ident(raw.get("id"), where, "template")
        if template_id is None:
            return None
        where = f"{where} ({template_id})"
        head = self.head(raw, where, template_id)
        sample = raw.get("sample_data")
        if not isinstance(sample, dict) or not sample:
            self.problem(E_SCHEMA, f"{where}.sample_data",
                         "expected a mapping of data that fits every section (used by cache_warmup)")
            sample = None

        raw_sections = raw.get("sections")
        if not isinstance(raw_sections, list) or not raw_sections:
            self.problem(E_SCHEMA, f"{where}.sections", "expected a non-empty list")
            raw_sections = []
        sections: dict[str, Section] = {}
        for index, entry in enumerate(raw_sections):
            section = self.section(entry, f"{where}.sections[{index}]", head=head, taken=sections)
            if section is not None:
                sections[section.id] = section
        for section in sections.values() if sample is not None else ():
            try:
                section.clean(sample)
            except InvalidInput as err:
                self.problem(E_SAMPLE, f"{where}.sample_data",
                             f"does not fit section {section.id!r}: {err.message}")
        return TemplateSpec(id=template_id, title=head.title, version=head.version,
                            description=str(raw.get("description") or "").strip(),
                            sections=sections, sample_data=sample or {})

    def head(self, raw: dict[str, Any], where: str, template_id: str) -> _TemplateHead:
        """What a template gives every section: its title, version, system prompt and defaults."""
        title = raw.get("title")
        if not isinstance(title, str) or not title.strip():
            self.problem(E_SCHEMA, where, "'title' must be a non-empty string")
            title = template_id
        version = raw.get("version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            self.problem(E_SCHEMA, where, "'version' must be a positive integer")
            version = 1
        cache_ttl = self.ttl(raw.get("cache_ttl"), where, int(aigen_settings.CACHE_TTL))
        params = self.params(raw.get("params"), f"{where}.params")
        system = self.prompt(raw["system"], f"{where}.system") if raw.get("system") else None
        return _TemplateHead(id=template_id, title=title.strip(), version=version, cache_ttl=cache_ttl,
                             params=params, system=system)

    def section(self, entry: Any, at: str, *, head: _TemplateHead,
                taken: Mapping[str, Section]) -> Section | None:
        """One entry of a template's `sections`, or None (its problems noted) when it cannot be used."""
        if not isinstance(entry, dict):
            self.problem(E_SCHEMA, at, "expected a mapping")
            return None
        for key in ("id", "title", "prompt"):
            if key not in entry:
                self.problem(E_SCHEMA, at, f"missing {key!r}")
        section_id = self.ident(entry.get("id"), at, "section")
        if section_id is None:
            return None
        at = f"{at} ({section_id!r})"
        if section_id in taken:
            self.problem(E_SCHEMA, at, f"duplicate section id {section_id!r}")
            return None
        section_title = entry.get("title")
        if not isinstance(section_title, str) or not section_title.strip():
            self.problem(E_SCHEMA, at, "'title' must be a non-empty string")
            section_title = section_id
        fields = self.fields(entry.get("fields"), f"{at}.fields")
        prompt = self.prompt(entry.get("prompt"), f"{at}.prompt")
        params = {**head.params, **self.params(entry.get("params"), f"{at}.params")}
        ttl = self.ttl(entry.get("cache_ttl"), at, head.cache_ttl)
        if prompt is None:
            return None
        system = head.system
        digest = hashlib.sha256()
        for part in (system.source if system else "", "\x00", prompt.source):
            digest.update(part.encode())
        return Section(
            id=section_id, title=section_title.strip(), template_id=head.id,
            template_title=head.title, template_version=head.version, fields=fields,
            params=params, cache_ttl=ttl, prompt_name=entry["prompt"], prompt=prompt,
            system=system, prompt_hash=digest.hexdigest()[:16],
            description=str(entry.get("description") or "").strip(), labels=field_labels(fields),
        )

def registry_load(path: Path | str | None = None, *, engine: Engine | None = None) -> Registry:
    """Read and validate the registry file (default: the configured one).

    Raises `RegistryError` with every problem found, each with its location
    (`templates[0] (emergency_plan).sections[1] ('2').fields...`).
    """
    path = Path(path) if path is not None else aigen_settings.registry_file
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise RegistryError(path, [Problem(E_FILE, "", f"cannot read the registry: {err.strerror or err}")]) \
            from err
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise RegistryError(path, [Problem(E_FILE, "", f"not valid YAML: {err}")]) from err
    loader = _Loader(engine or prompt_engine())
    raw_templates = document.get("templates") if isinstance(document, dict) else None
    if not isinstance(raw_templates, list) or not raw_templates:
        raise RegistryError(path, [Problem(E_SCHEMA, "", "expected a top-level 'templates:' list")])
    templates: dict[str, TemplateSpec] = {}
    for index, raw in enumerate(raw_templates):
        spec = loader.template(raw, f"templates[{index}]")
        if spec is None:
            continue
        if spec.id in templates:
            loader.problem(E_SCHEMA, f"templates[{index}]", f"duplicate template id {spec.id!r}")
            continue
        templates[spec.id] = spec
    if loader.problems:
        raise RegistryError(path, loader.problems)
    return Registry(path=path, templates=templates)


_registry: Registry | None = None
_registry_lock = threading.Lock()


def get_registry() -> Registry:
    """The process's registry, loaded on first use."""
    global _registry
    registry = _registry
    if registry is None:
        with _registry_lock:
            if _registry is None:
                _registry = registry_load()
            registry = _registry
    return registry


def registry_reset() -> None:
    """Forget the loaded registry; the next `get_registry()` reads the file again."""
    global _registry
    with _registry_lock:
        _registry = None


def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting in ("AIGEN", "TEMPLATES"):
        registry_reset()


setting_changed.connect(_on_setting_changed)
