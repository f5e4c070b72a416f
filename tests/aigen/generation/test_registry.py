"""The template registry: the shipped templates, validation of request data,
canonical cache keys, and the system check on broken registries."""
# Registry content is Chinese on purpose.
# ruff: noqa: RUF001
from __future__ import annotations

from pathlib import Path

import pytest
from django.core.management import call_command
from django.template import Engine

from aigen.checks import check_registry
from aigen.exceptions import InvalidInput, SectionNotFound, TemplateNotFound
from aigen.generation.providers import MockProvider
from aigen.generation.registry import get_registry, registry_load
from aigen.generation.services import generation_cache_key


def test_emergency_plan_has_sections_one_to_five():
    template = get_registry().template("emergency_plan")
    assert list(template.sections) == ["1", "2", "3", "4", "5"]
    titles = [s.title for s in template.sections.values()]
    assert titles == ["总则", "企业概况", "危险源辨识与风险评估", "应急组织机构及职责", "应急响应程序"]
    overview = template.section("2").describe()
    assert overview["required_fields"] == [
        "enterprise_info.enterprise_name", "enterprise_info.industry_type", "enterprise_info.address",
        "enterprise_info.main_products", "enterprise_info.employees_count",
    ]
    assert overview["fields"]["enterprise_info"]["fields"]["employees_count"]["type"] == "integer"


def test_every_section_renders_its_sample_data_into_a_chinese_prompt():
    registry = get_registry()
    assert len(registry.templates) >= 2
    for template in registry.templates.values():
        for section in template.sections.values():
            data = section.clean(dict(template.sample_data))
            system, user = section.messages(data)
            assert system["role"] == "system" and user["role"] == "user"
            assert "请" in user["content"]
            assert "{{" not in user["content"] and "{%" not in user["content"]
    prompt = registry.section("emergency_plan", "2").messages(
        registry.section("emergency_plan", "2").clean(dict(registry.template("emergency_plan").sample_data)))
    assert "员工人数：320 人" in prompt[1]["content"]


def test_unknown_template_and_section():
    with pytest.raises(TemplateNotFound):
        get_registry().section("no_such_template", "1")
    with pytest.raises(SectionNotFound) as err:
        get_registry().section("emergency_plan", "9")
    assert "1, 2, 3, 4, 5" in err.value.message


@pytest.mark.parametrize(("mutate", "field", "problem"), [
    (lambda d: d["enterprise_info"].pop("address"), "data.enterprise_info.address", "required"),
    (lambda d: d["enterprise_info"].update(employees_count="many"),
     "data.enterprise_info.employees_count", "integer"),
    (lambda d: d["enterprise_info"].update(employees_count=True),
     "data.enterprise_info.employees_count", "integer"),
    (lambda d: d["enterprise_info"].update(employees_count=0),
     "data.enterprise_info.employees_count", "least"),
    (lambda d: d["enterprise_info"].update(enterprise_name="   "),
     "data.enterprise_info.enterprise_name", "blank"),
    (lambda d: d["enterprise_info"].update(address=["a"]), "data.enterprise_info.address", "string"),
    (lambda d: d.update(enterprise_info="x"), "data.enterprise_info", "object"),
    (lambda d: d.pop("enterprise_info"), "data.enterprise_info", "required"),
])
def test_invalid_data_names_the_field(section2_data, mutate, field, problem):
    mutate(section2_data)
    with pytest.raises(InvalidInput) as err:
        get_registry().section("emergency_plan", "2").clean(section2_data)
    assert err.value.field == field
    assert problem in err.value.message


def test_list_items_are_named_by_index(sample):
    data = sample("meeting_minutes")
    data["action_items"][1]["owner"] = 7
    with pytest.raises(InvalidInput) as err:
        get_registry().section("meeting_minutes", "3").clean(data)
    assert err.value.field == "data.action_items[1].owner"


def test_same_request_written_differently_has_one_key(section2_data):
    section = get_registry().section("emergency_plan", "2")
    provider = MockProvider()
    messy = {
        "unused_extra": "ignored",
        "enterprise_info": {
            "employees_count": 120,
            "main_products": "  涂料树脂\n",
            "address": "江苏省南京市化工园区1号 ",
            "industry_type": "\t化工",
            "enterprise_name": " 示例化工有限公司",
            "note": "not a declared field",
        },
    }
    key = generation_cache_key(section, section.clean(section2_data), provider)
    assert key == generation_cache_key(section, section.clean(messy), provider)
    assert key.startswith("ai:emergency_plan:2:")

    section2_data["enterprise_info"]["employees_count"] = 121
    assert generation_cache_key(section, section.clean(section2_data), provider) != key


def test_key_depends_on_provider_model_and_section(section2_data):
    registry = get_registry()
    overview = registry.section("emergency_plan", "2")
    data = overview.clean(section2_data)
    mock = MockProvider()
    other_model = MockProvider()
    other_model.model = "mock-2"
    assert generation_cache_key(overview, data, mock) != generation_cache_key(overview, data, other_model)
    general = registry.section("emergency_plan", "1")
    assert generation_cache_key(overview, data, mock) != generation_cache_key(
        general, general.clean(section2_data), mock)


REGISTRY = """
templates:
  - id: demo
    title: Demo
    version: {version}
    sections:
      - id: "1"
        title: One
        prompt: demo/one.txt
        fields:
          name: string
    sample_data: {{name: Ada}}
"""


def _write_registry(folder: Path, *, body: str = "Hello {{ name }}", version: int = 1) -> Path:
    (folder / "demo").mkdir(exist_ok=True)
    (folder / "demo" / "one.txt").write_text(body, encoding="utf-8")
    path = folder / "registry.yaml"
    path.write_text(REGISTRY.format(version=version), encoding="utf-8")
    return path


def _demo_key(path: Path, folder: Path) -> str:
    registry = registry_load(path, engine=Engine(dirs=[folder], autoescape=False))
    section = registry.section("demo", "1")
    return generation_cache_key(section, section.clean({"name": "x"}), MockProvider())


def test_editing_a_prompt_body_or_the_version_changes_the_key(tmp_path):
    path = _write_registry(tmp_path)
    first = _demo_key(path, tmp_path)
    assert _demo_key(path, tmp_path) == first
    _write_registry(tmp_path, body="Hello there, {{ name }}")
    edited = _demo_key(path, tmp_path)
    assert edited != first
    _write_registry(tmp_path, body="Hello there, {{ name }}", version=2)
    assert _demo_key(path, tmp_path) not in (first, edited)


def test_the_shipped_registry_passes_the_system_check():
    assert check_registry() == []
    call_command("check", "--tag", "aigen")


@pytest.mark.parametrize(("content", "code", "needle"), [
    ("templates: [", "aigen.E001", "not valid YAML"),
    ("hello: 1", "aigen.E002", "'templates:'"),
    (REGISTRY.format(version=0), "aigen.E002", "'version' must be a positive integer"),
    (REGISTRY.format(version=1).replace("name: string", "name: int"), "aigen.E002",
     "fields.name: unknown type 'int'"),
    (REGISTRY.format(version=1).replace("demo/one.txt", "demo/missing.txt"), "aigen.E003", "not found"),
    (REGISTRY.format(version=1).replace("{name: Ada}", "{name: 5}"), "aigen.E004", "data.name"),
    (REGISTRY.format(version=1).replace("    sample_data: {name: Ada}\n", ""), "aigen.E002", "sample_data"),
    (REGISTRY.format(version=1).replace('id: "1"', 'id: "a b"'), "aigen.E002", "section id"),
])
def test_a_broken_registry_fails_the_check_naming_file_and_problem(tmp_path, settings, content, code,
                                                                    needle):
    (tmp_path / "aigen").mkdir()
    path = tmp_path / "broken.yaml"
    path.write_text(content, encoding="utf-8")
    settings.AIGEN = {**settings.AIGEN, "REGISTRY_FILE": str(path)}
    settings.TEMPLATES = [{**settings.TEMPLATES[0], "DIRS": [tmp_path]}]
    _write_registry(tmp_path)  # demo/one.txt exists; the registry under test is `path`
    errors = check_registry()
    assert errors, "a broken registry must fail the check"
    assert {e.id for e in errors} == {code}
    assert all(str(path) in e.msg for e in errors)
    assert any(needle in e.msg for e in errors), [e.msg for e in errors]


def test_a_missing_registry_file_is_e001(tmp_path, settings):
    settings.AIGEN = {**settings.AIGEN, "REGISTRY_FILE": str(tmp_path / "nope.yaml")}
    [error] = check_registry()
    assert error.id == "aigen.E001"
    assert "nope.yaml" in error.msg
