"""Fixtures for aigen tests: users and API clients, the mock provider by
default, and the real openai SDK talking to a fake OpenAI server through the
real resilient client (`openai_fake`)."""
from __future__ import annotations

import copy

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from aigen.generation import services
from aigen.generation.ledger import usage_buffer
from aigen.generation.providers import provider_reset
from aigen.generation.quotas import quotas
from aigen.generation.records import GenerationLog, generation_log
from aigen.generation.registry import get_registry, registry_reset
from resilience.client import reset_clients
from resilience.client.flight import SingleFlight
from resilience.models import Upstream
from tests.support.fake_openai import MODEL_ID, FakeOpenAI
from tests.support.roles import grant, user_token

# The seeded openai policy's shape, with waits in milliseconds.
FAST_OPENAI = {
    "connect_timeout": 0.2, "read_timeout": 2.0, "deadline": 5.0,
    "retry_total": 3, "retry_backoff_factor": 0.0, "retry_backoff_max": 0.0, "retry_jitter": 0.0,
    "retry_statuses": [429, 500, 502, 503, 504], "retry_methods": ["GET", "POST"],
    "retry_respect_retry_after": True, "retry_after_max": 0.05,
    "breaker_enabled": True, "breaker_fail_max": 3, "breaker_reset_timeout": 30.0,
    "log_sample_rate": 1.0,  # every call keeps its row, for the tests to inspect
    "cache_ttl": 0,
    # As seeded: the provider's key is the upstream's credential.
    "auth_kind": "bearer", "auth_env_var": "OPENAI_API_KEY",
}

SECTION_2 = {
    "enterprise_info": {
        "enterprise_name": "示例化工有限公司",
        "industry_type": "化工",
        "address": "江苏省南京市化工园区1号",
        "main_products": "涂料树脂",
        "employees_count": 120,
    },
}


@pytest.fixture(autouse=True)
def _aigen_state(monkeypatch, settings):
    """Mock provider unless a test says otherwise; records wait for an explicit flush (the usage
    ledger too: tests/conftest.py)."""
    monkeypatch.setattr(GenerationLog, "autostart", False)
    quotas.memory.clear()
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # users in milliseconds
    settings.AIGEN = {**settings.AIGEN, "OPENAI_API_KEY": "", "MODEL": "gpt-4o-mini"}
    generation_log.discard()
    registry_reset()
    provider_reset()
    yield
    generation_log.discard()
    usage_buffer.discard()
    quotas.memory.clear()
    services._flight = SingleFlight()
    provider_reset()


@pytest.fixture
def section2_data() -> dict:
    return copy.deepcopy(SECTION_2)


@pytest.fixture
def sample():
    """The sample data of a registry template: sample("emergency_plan")."""
    return lambda template_id: copy.deepcopy(dict(get_registry().template(template_id).sample_data))


@pytest.fixture
def fake_openai():
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def openai_policy(db, fake_openai):
    """Point the `openai` upstream at the fake; returns a function to change it."""

    def configure(**fields) -> Upstream:
        row, _ = Upstream.objects.update_or_create(
            name="openai", defaults={"base_url": fake_openai.url, **FAST_OPENAI, **fields})
        row.full_clean()
        reset_clients()
        return row

    configure()
    return configure


@pytest.fixture
def openai_fake(openai_policy, fake_openai, settings):
    """The OpenAI provider (real SDK, real resilient client) against the fake."""
    settings.AIGEN = {**settings.AIGEN, "OPENAI_API_KEY": "sk-test-key", "MODEL": MODEL_ID}
    settings.RESILIENCE = {**settings.RESILIENCE, "SECRETS": {"OPENAI_API_KEY": "sk-test-key"}}
    return fake_openai


def _user(username: str, *, staff: bool = False):
    return get_user_model().objects.create_user(username, password="pw-" + username, is_staff=staff)


@pytest.fixture
def user(db):
    return _user("alice")


@pytest.fixture
def staff_user(db):
    # Clearing the AI cache needs what the admin's Clear cache button needs.
    return grant(_user("root", staff=True), "view_upstream", "change_upstream")


def _client(user=None, scheme: str = "Bearer") -> APIClient:
    client = APIClient()
    if user is not None:
        client.credentials(HTTP_AUTHORIZATION=f"{scheme} {user_token(user)}")
    return client


@pytest.fixture
def api(user) -> APIClient:
    return _client(user)


@pytest.fixture
def staff_api(staff_user) -> APIClient:
    return _client(staff_user)


@pytest.fixture
def make_client():
    return _client


@pytest.fixture
def mixed_warmup_file(tmp_path, section2_data):
    """A warmup file of four entries: one good, one whose data fails
    validation, one naming an unknown template, one without a section."""
    import yaml

    bad = dict(section2_data, enterprise_info={**section2_data["enterprise_info"], "employees_count": "x"})
    path = tmp_path / "warm.yaml"
    path.write_text(yaml.safe_dump([
        {"template_id": "emergency_plan", "section_id": "2", "data": section2_data},
        {"template_id": "emergency_plan", "section_id": "2", "data": bad},
        {"template_id": "nope", "section_id": "1", "data": {}},
        {"template_id": "emergency_plan"},
    ], allow_unicode=True), encoding="utf-8")
    return path

