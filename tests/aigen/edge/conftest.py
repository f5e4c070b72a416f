"""Fixtures for the front doors' tests: two fake OpenAI providers and the
`llm` upstream that serves a model from them (`llm_gateway`)."""
from __future__ import annotations

from collections.abc import Callable, Iterable

import pytest
from django.contrib.auth import get_user_model

from aigen.edge import openai as openai_views
from aigen.edge.tokens import token_issue
from aigen.edge.tokens import users as token_users
from resilience.client import reset_clients
from resilience.models import Endpoint, Upstream
from tests.support.fake_openai import FakeOpenAI


@pytest.fixture
def providers():
    with FakeOpenAI() as primary, FakeOpenAI() as fallback:
        yield primary, fallback


@pytest.fixture
def llm_gateway(providers, settings) -> Callable[..., str]:
    """`make(models, **fields)`: an `llm` upstream serving `models` from the two
    providers (priority: the primary, then a fallback that names the model its
    own way, each with its own key), the fields given over the defaults; it
    returns a caller's API key. The test asks for `db` or `transactional_db`."""
    def make(models: Iterable[str], **fields) -> str:
        settings.RESILIENCE = {**settings.RESILIENCE, "SECRETS": {"UPSTREAM_PRIMARY_KEY": "sk-primary",
                                                                  "UPSTREAM_FALLBACK_KEY": "sk-fallback"}}
        settings.AIGEN = {**settings.AIGEN, "GENERATE_THROTTLE": "100000/min"}
        primary, fallback = providers
        policy = {"connect_timeout": 0.5, "read_timeout": 5, "deadline": 10, "retry_total": 2,
                  "retry_backoff_factor": 0, "retry_jitter": 0, "retry_statuses": [429, 500, 502, 503, 504],
                  "retry_methods": ["POST"], "retry_after_max": 30, "breaker_fail_max": 3,
                  "log_sample_rate": 1.0, **fields}
        row = Upstream(name="llm", base_url=primary.url, served_models=list(models),
                       endpoint_strategy="priority", auth_kind="bearer", auth_env_var="UPSTREAM_PRIMARY_KEY",
                       **policy)
        row.full_clean()
        row.save()
        Endpoint.objects.create(upstream=row, name="primary", base_url=primary.url, priority=0)
        Endpoint.objects.create(upstream=row, name="fallback", base_url=fallback.url, priority=1,
                                auth_env_var="UPSTREAM_FALLBACK_KEY", model="fallback-model")
        reset_clients()
        openai_views.models.clear()
        token_users.clear()
        return token_issue(user=get_user_model().objects.create_user("caller"))
    return make
