"""Management commands: cache_warmup, issue_token and usage, through call_command."""
from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from io import StringIO

import pytest
import yaml
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from aigen.generation.ledger import TokenUsage, usage_flush, usage_record
from aigen.generation.services import text_generate
from aigen.models import ApiToken, Generation
from tests.support.fake_upstream import Reply

pytestmark = pytest.mark.django_db


def _warmup(*args: str) -> str:
    out = StringIO()
    call_command("cache_warmup", *args, stdout=out)
    return out.getvalue()


def test_warmup_a_template_from_its_sample_data(sample):
    out = _warmup("--template", "emergency_plan", "--concurrency", "3")
    assert "Warming 5 request(s), 3 at a time" in out
    assert out.count(": generated in") == 5 and "[5/5]" in out
    assert "5 generated, 0 already cached, 0 failed" in out
    assert Generation.objects.filter(cached=False).count() == 5  # records written at the end
    cached = text_generate(template_id="emergency_plan", section_id="4", data=sample("emergency_plan"))
    assert cached.cached is True

    again = _warmup("--template", "emergency_plan")
    assert "0 generated, 5 already cached, 0 failed" in again
    forced = _warmup("--template", "emergency_plan", "--force")
    assert "5 generated, 0 already cached, 0 failed" in forced


def test_warmup_from_json_and_yaml_files(tmp_path, sample, section2_data):
    requests = [
        {"template_id": "emergency_plan", "section_id": "2", "data": section2_data},
        {"template_id": "meeting_minutes", "section_id": "3", "data": sample("meeting_minutes")},
    ]
    as_json = tmp_path / "warm.json"
    as_json.write_text(json.dumps(requests, ensure_ascii=False), encoding="utf-8")
    assert "2 generated, 0 already cached, 0 failed" in _warmup("--file", str(as_json))
    as_yaml = tmp_path / "warm.yaml"
    as_yaml.write_text(yaml.safe_dump(requests, allow_unicode=True), encoding="utf-8")
    assert "0 generated, 2 already cached, 0 failed" in _warmup("--file", str(as_yaml), "--concurrency", "2")


def test_warmup_reports_failures_and_exits_non_zero(mixed_warmup_file):
    out = StringIO()
    with pytest.raises(CommandError, match="3 of 4 warmup request"):
        call_command("cache_warmup", "--file", str(mixed_warmup_file), stdout=out)
    text = out.getvalue()
    assert "1 generated, 0 already cached, 3 failed" in text
    assert "data.enterprise_info.employees_count" in text and "template_not_found" in text
    assert "missing section_id, data" in text


def test_warmup_through_openai_reports_provider_failures(openai_policy, openai_fake, section2_data, tmp_path):
    openai_policy(retry_total=0)
    openai_fake.fail_next(Reply(500))
    with pytest.raises(CommandError, match="1 of 5"):
        _warmup("--template", "emergency_plan", "--concurrency", "1")
    assert openai_fake.chat_calls == 5


@pytest.mark.parametrize(("args", "message"), [
    (["--template", "nope"], "Unknown template"),
    (["--file", "/no/such/file.yaml"], "cannot read"),
    (["--template", "emergency_plan", "--concurrency", "0"], "at least 1"),
])
def test_warmup_refuses_bad_arguments(args, message):
    with pytest.raises(CommandError, match=message):
        _warmup(*args)


def test_warmup_needs_a_source():
    with pytest.raises(CommandError):
        _warmup()


def test_issue_token_shows_the_token_once_and_stores_only_its_digest(user):
    out, err = StringIO(), StringIO()
    call_command("issue_token", "alice", stdout=out, stderr=err)
    key = out.getvalue().strip()
    assert len(key) == 40 and "Issued token for alice" in err.getvalue()
    row = ApiToken.objects.get(user=user)
    assert row.digest == hashlib.sha256(key.encode()).hexdigest() and row.prefix == key[:8]
    assert key not in {str(v) for v in ApiToken.objects.values_list("digest", "prefix").get()}
    api = APIClient(HTTP_AUTHORIZATION=f"Bearer {key}")
    assert api.get("/api/ai/templates").status_code == 200

    # Not again: it cannot be shown twice.
    with pytest.raises(CommandError, match=r"already has an API token \(" + key[:8]):
        call_command("issue_token", "alice", stdout=StringIO(), stderr=StringIO())

    out = StringIO()
    call_command("issue_token", "alice", "--reset", stdout=out, stderr=StringIO())
    new = out.getvalue().strip()
    assert new not in ("", key) and ApiToken.objects.filter(user=user).count() == 1
    assert api.get("/api/ai/templates").status_code == 401  # the old one is revoked
    with pytest.raises(CommandError, match="No user"):
        call_command("issue_token", "bob", stdout=StringIO(), stderr=StringIO())


def test_usage_shows_the_ledger_as_a_table_or_json_filtered_by_user_and_date(user):
    bob = get_user_model().objects.create_user("bob")
    usage_record(user_id=user.pk, model="gpt-a", usage=TokenUsage(120, 30, 20),
                 now=datetime(2026, 3, 1, tzinfo=UTC))
    usage_record(user_id=bob.pk, model="gpt-a", usage=TokenUsage(5, 5, 0),
                 now=datetime(2026, 3, 2, tzinfo=UTC))
    usage_flush()
    out = StringIO()
    call_command("usage", stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["day", "username", "model", "prompt_tokens", "cached_tokens",
                                "completion_tokens", "calls", "cost"]
    assert lines[1].split()[:4] == ["2026-03-02", "bob", "gpt-a", "5"]
    assert lines[-1].split()[:5] == ["total", "125", "20", "35", "2"]
    out = StringIO()
    call_command("usage", "--json", "--user", user.username, "--since", "2026-03-01", stdout=out)
    listed = json.loads(out.getvalue())
    assert [(r["username"], r["prompt_tokens"]) for r in listed["rows"]] == [(user.username, 120)]
    with pytest.raises(CommandError, match="No user"):
        call_command("usage", "--user", "nobody")
    with pytest.raises(CommandError, match="not a date"):
        call_command("usage", "--since", "soon")
