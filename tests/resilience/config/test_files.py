"""Configuration as code: export, apply (a no-op for the exported file,
exactly the diff for a changed one), one transaction, history with the
reason, a bad file changes nothing and names the entry and field."""
from __future__ import annotations

from io import StringIO
from pathlib import Path

import pytest
import yaml
from django.core.management import call_command
from django.core.management.base import CommandError

from resilience.alerts.models import AlertRule
from resilience.alerts.services import alert_rules_seed
from resilience.models import Endpoint, Upstream

pytestmark = pytest.mark.django_db


@pytest.fixture
def configured(policy):
    alert_rules_seed()
    llm = policy("llm", auth_kind="bearer", auth_env_var="UPSTREAM_LLM_KEY", endpoint_strategy="priority",
                 served_models=["gpt-4o-mini"])
    Endpoint.objects.create(upstream=llm, name="primary", base_url="https://a.example/v1", priority=0)
    Endpoint.objects.create(upstream=llm, name="fallback", base_url="https://b.example/v1",
                            auth_env_var="UPSTREAM_FALLBACK_KEY", priority=1)
    policy("github", read_timeout=4.0)
    return llm


def export(tmp_path) -> tuple[str, dict]:
    path = tmp_path / "gateway.yaml"
    call_command("config_export", "--output", str(path), stdout=StringIO())
    return str(path), yaml.safe_load(path.read_text())


def apply(*args: str) -> str:
    out = StringIO()
    call_command("config_apply", *args, stdout=out)
    return out.getvalue()


def history_count() -> int:
    return (Upstream.history.count() + Endpoint.history.count() + AlertRule.history.count())


def test_the_export_holds_every_upstream_endpoint_and_rule_with_variable_names_only(configured, tmp_path,
                                                                                   settings):
    settings.RESILIENCE = {**settings.RESILIENCE, "SECRETS": {"UPSTREAM_LLM_KEY": "sk-live-secret-value"}}
    path, document = export(tmp_path)
    assert [u["name"] for u in document["upstreams"]] == ["github", "llm"]
    llm = document["upstreams"][1]
    assert llm["auth_env_var"] == "UPSTREAM_LLM_KEY" and llm["endpoints"][0]["name"] == "fallback"
    assert llm["endpoints"][0]["auth_env_var"] == "UPSTREAM_FALLBACK_KEY"
    assert {r["name"] for r in document["alert_rules"]} >= {"success-rate-warning", "breaker-open"}
    assert "sk-live-secret-value" not in Path(path).read_text()


def test_applying_the_exported_file_is_a_no_op(configured, tmp_path):
    path, _ = export(tmp_path)
    before = history_count()
    assert apply(path).strip() == "no changes"
    assert history_count() == before


def test_a_changed_file_applies_exactly_the_diff_in_history_with_the_reason(configured, tmp_path):
    path, document = export(tmp_path)
    llm = document["upstreams"][1]
    llm["read_timeout"] = 42.0
    llm["endpoints"] = [e for e in llm["endpoints"] if e["name"] != "fallback"]  # remove one
    llm["endpoints"].append({"name": "third", "base_url": "https://c.example/v1", "priority": 2})
    rule = next(r for r in document["alert_rules"] if r["name"] == "success-rate-warning")
    rule["threshold"] = 95.0
    with open(path, "w") as f:
        yaml.safe_dump(document, f)
    before = {"up": Upstream.history.count(), "ep": Endpoint.history.count(),
              "rule": AlertRule.history.count()}

    dry = apply(path, "--dry-run")
    assert "~ upstream llm\n    read_timeout: 10.0 -> 42.0" in dry
    assert "+ endpoint llm/third" in dry and "- endpoint llm/fallback" in dry
    assert "~ alert_rule success-rate-warning\n    threshold: 90.0 -> 95.0" in dry
    assert "dry run: 4 change(s) not applied" in dry
    assert Upstream.objects.get(name="llm").read_timeout == 10.0  # nothing written

    out = apply(path, "--reason", "ticket OPS-7")
    assert "applied 4 change(s)" in out
    assert Upstream.objects.get(name="llm").read_timeout == 42.0
    assert Upstream.objects.get(name="github").read_timeout == 4.0  # untouched
    assert set(Endpoint.objects.values_list("name", flat=True)) == {"primary", "third"}
    assert AlertRule.objects.get(name="success-rate-warning").threshold == 95.0
    # One history row per changed object (github, primary and the other rules untouched), with the reason.
    assert Upstream.history.count() == before["up"] + 1
    assert Endpoint.history.count() == before["ep"] + 2  # third created, fallback deleted
    assert AlertRule.history.count() == before["rule"] + 1
    latest = Upstream.history.filter(name="llm").order_by("-history_id").first()
    assert latest.history_change_reason == "config_apply gateway.yaml: ticket OPS-7"
    assert apply(path).strip() == "no changes"


@pytest.mark.parametrize(("change", "named"), [
    (lambda d: d["upstreams"][1].update(read_timeout=-1), "upstreams[1] (llm).read_timeout"),
    (lambda d: d["upstreams"][1].update(colour="blue"), "upstreams[1] (llm).colour: unknown field"),
    (lambda d: d["upstreams"][1]["endpoints"][1].update(base_url="ftp://x"),
     "upstreams[1] (llm).endpoints[1] (primary).base_url"),
    (lambda d: d["upstreams"][0].update(auth_kind="bearer"), "upstreams[0] (github).auth_env_var"),
    (lambda d: d["alert_rules"][0].update(scope="queue", target="high"), ".scope"),
    (lambda d: d["upstreams"].append({"name": "llm", "base_url": "https://x.example"}),
     "upstreams[2] (llm).name: the same name appears twice"),
])
def test_a_bad_file_changes_nothing_and_names_the_entry_and_field(configured, tmp_path, change, named):
    path, document = export(tmp_path)
    document["upstreams"][0]["read_timeout"] = 9.0  # a valid change before the bad one: not applied either
    change(document)
    with open(path, "w") as f:
        yaml.safe_dump(document, f)
    before = history_count()
    with pytest.raises(CommandError) as caught:
        apply(path)
    assert "nothing changed" in str(caught.value) and named in str(caught.value)
    assert history_count() == before
    assert Upstream.objects.get(name="github").read_timeout == 4.0


def test_not_yaml_is_refused_with_the_line(configured, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("upstreams:\n  - name: x\n    base_url: [unclosed\n")
    with pytest.raises(CommandError, match=r"file: not valid YAML \(line \d+"):
        apply(str(path))


def test_absent_upstreams_are_kept_unless_pruned(configured, tmp_path):
    path, document = export(tmp_path)
    document["upstreams"] = [u for u in document["upstreams"] if u["name"] != "github"]
    with open(path, "w") as f:
        yaml.safe_dump(document, f)
    assert "upstream github: not in the file, kept (--prune deletes it)" in apply(path)
    assert Upstream.objects.filter(name="github").exists()
    assert "- upstream github" in apply(path, "--prune")
    assert not Upstream.objects.filter(name="github").exists()


def test_the_config_file_is_applied_on_start(configured, tmp_path, settings):
    path, document = export(tmp_path)
    document["upstreams"].append({"name": "fresh", "base_url": "https://fresh.example"})
    with open(path, "w") as f:
        yaml.safe_dump(document, f)
    assert apply("--on-start") == ""  # CONFIG_FILE unset: nothing to do
    settings.CONFIG_FILE = path
    assert "+ upstream fresh" in apply("--on-start")
    assert Upstream.objects.get(name="fresh").base_url == "https://fresh.example"
