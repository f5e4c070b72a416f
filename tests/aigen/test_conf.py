"""OPENAI_BASE_URL against the stored `openai` upstream: the stored policy is
what the provider calls; a disagreement is reported (start, admin banner,
seed_upstreams) and can be settled with `seed_upstreams --sync-openai-url`."""
from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command

from aigen.conf import DEFAULT_OPENAI_BASE_URL, base_url_disagreement, openai_base_url
from aigen.generation.services import text_generate
from resilience.models import Upstream
from resilience.ops.services import upstreams_seed
from tests.aigen.conftest import SECTION_2
from tests.support.redis_server import free_port

pytestmark = pytest.mark.django_db


def with_env_url(settings, url: str) -> None:
    settings.AIGEN = {**settings.AIGEN, "OPENAI_BASE_URL": url}


def test_the_seed_uses_the_variable_or_openai(settings):
    with_env_url(settings, "")
    assert openai_base_url() == DEFAULT_OPENAI_BASE_URL
    assert base_url_disagreement() is None  # nothing set: nothing to disagree with
    with_env_url(settings, "http://127.0.0.1:9/v1")
    assert upstreams_seed() == ["openai"]
    seeded = Upstream.objects.get(name="openai")
    assert seeded.base_url == "http://127.0.0.1:9/v1"
    # The provider's key is the upstream's credential, bound to this origin.
    assert (seeded.auth_kind, seeded.auth_env_var) == ("bearer", "OPENAI_API_KEY")
    assert base_url_disagreement() is None


def test_the_stored_policy_wins_and_the_disagreement_is_visible(settings, openai_fake, admin_client):
    elsewhere = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    with_env_url(settings, elsewhere)
    disagreement = base_url_disagreement()
    assert disagreement is not None
    assert (disagreement.environment, disagreement.stored) == (elsewhere, openai_fake.url)
    # The call goes to the stored URL (the fake answers), not to the variable's.
    result = text_generate(template_id="emergency_plan", section_id="2", data=SECTION_2)
    assert result.content and openai_fake.chat_calls == 1
    # The admin index says so.
    page = admin_client.get("/admin/").content.decode()
    assert 'id="config-warnings"' in page and elsewhere in page and "stored policy wins" in page
    # seed_upstreams says so too, and --sync-openai-url settles it (with history).
    err = StringIO()
    call_command("seed_upstreams", stdout=StringIO(), stderr=err)
    assert elsewhere in err.getvalue()
    out, err = StringIO(), StringIO()
    call_command("seed_upstreams", "--sync-openai-url", stdout=out, stderr=err)
    assert "OPENAI_BASE_URL" in out.getvalue() and err.getvalue() == ""
    row = Upstream.objects.get(name="openai")
    assert row.base_url == elsewhere
    assert row.history.first().history_change_reason == "base URL set from seed_upstreams --sync-openai-url"
    assert base_url_disagreement() is None
    assert 'id="config-warnings"' not in admin_client.get("/admin/").content.decode()


def test_sync_refuses_an_invalid_url(settings, openai_policy):
    with_env_url(settings, "ftp://files.example/v1")
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="cannot store OPENAI_BASE_URL"):
        call_command("seed_upstreams", "--sync-openai-url", stdout=StringIO(), stderr=StringIO())
    assert Upstream.objects.get(name="openai").base_url.startswith("http://127.0.0.1")


def test_an_invalid_variable_is_a_system_check_error(settings):
    from aigen.checks import check_openai_base_url

    with_env_url(settings, "ftp://files.example/v1")
    errors = check_openai_base_url()
    assert [e.id for e in errors] == ["aigen.E005"] and "ftp://files.example/v1" in errors[0].msg
    with_env_url(settings, "https://llm.internal.example/v1")
    assert check_openai_base_url() == []


def test_a_starting_server_warns_about_the_disagreement(settings, openai_policy, caplog):
    from project.startup import announce

    with_env_url(settings, "https://llm.elsewhere.example/v1")
    with caplog.at_level("INFO"):
        announce()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "https://llm.elsewhere.example/v1" in warnings[0]
    assert "stored policy wins" in warnings[0]
    caplog.clear()
    with_env_url(settings, "")
    with caplog.at_level("INFO"):
        announce()
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
