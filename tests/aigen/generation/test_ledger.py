"""The usage ledger (aigen.generation.ledger): usage read from OpenAI's and
Anthropic's shapes, cost with cached tokens at the cached price, batches
summed per (user, day, model) and merged into stored rows, retention."""
from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from aigen.generation.ledger import (
    TokenUsage,
    ledger_write,
    usage_buffer,
    usage_cost,
    usage_flush,
    usage_of,
    usage_record,
)
from aigen.models import ModelPrice, UsageLedger
from resilience.telemetry.retention import telemetry_prune


def test_usage_of_reads_openai_and_anthropic_shapes():
    assert usage_of({"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120,
                     "prompt_tokens_details": {"cached_tokens": 64}}) == TokenUsage(100, 20, 64)
    # Anthropic's input_tokens leaves out what was read from or written to the cache.
    assert usage_of({"input_tokens": 30, "output_tokens": 7, "cache_read_input_tokens": 50,
                     "cache_creation_input_tokens": 20}) == TokenUsage(100, 7, 50)
    assert usage_of({"prompt_tokens": None, "completion_tokens": 3}) == TokenUsage(0, 3, 0)
    assert usage_of(None) is None and usage_of({}) is None and usage_of("12") is None
    assert usage_of({"prompt_tokens": -5, "completion_tokens": True}) == TokenUsage(0, 0, 0)


def test_cached_tokens_are_billed_at_the_cached_price_never_at_full_price():
    price = ModelPrice(model="m", input=Decimal("2.50"), cached_input=Decimal("1.25"), output=Decimal("10"))
    # 1M prompt tokens of which 400k cached, 100k completion.
    cost = usage_cost(TokenUsage(prompt=1_000_000, completion=100_000, cached=400_000), price)
    assert cost == Decimal("1.50") + Decimal("0.50") + Decimal("1.00")
    assert usage_cost(TokenUsage(1000, 1000, 0), None) == 0  # no price row: free


@pytest.fixture
def alice(db):
    return get_user_model().objects.create_user("alice")


def test_a_flush_sums_calls_per_user_day_and_model_and_merges_into_stored_rows(alice):
    ModelPrice.objects.create(model="gpt-x", input=Decimal("1"), cached_input=Decimal("0.5"),
                              output=Decimal("4"))
    day = datetime(2026, 3, 10, 23, 59, tzinfo=UTC)
    for _ in range(3):
        usage_record(user_id=alice.pk, model="gpt-x", usage=TokenUsage(1000, 200, 400), now=day)
    usage_record(user_id=alice.pk, model="other", usage=TokenUsage(10, 1, 0), now=day)
    usage_record(user_id=alice.pk, model="gpt-x", usage=None, now=day + timedelta(minutes=2))  # next day
    usage_record(user_id=None, model="gpt-x", usage=TokenUsage(5, 5, 0))  # no caller: not metered
    assert usage_buffer.pending() == 5
    assert usage_flush() == 5 and usage_buffer.pending() == 0
    usage_record(user_id=alice.pk, model="gpt-x", usage=TokenUsage(1000, 200, 400), now=day)
    usage_flush()  # merged into the stored row, not a second one
    row = UsageLedger.objects.get(user=alice, day=date(2026, 3, 10), model="gpt-x")
    assert (row.prompt_tokens, row.cached_tokens, row.completion_tokens, row.calls) == (4000, 1600, 800, 4)
    # (2400 fresh x 1 + 1600 cached x 0.5 + 800 x 4) per million
    assert row.cost == Decimal("0.0064")
    assert UsageLedger.objects.get(model="other").cost == 0
    late = UsageLedger.objects.get(day=date(2026, 3, 11))
    assert (late.calls, late.prompt_tokens) == (1, 0)
    assert UsageLedger.objects.count() == 3


def test_one_statement_per_flush_whatever_the_traffic(alice, django_assert_max_num_queries):
    rows = [{"user_id": alice.pk, "day": date(2026, 3, 10), "model": f"m{i % 3}", "prompt_tokens": 1,
             "cached_tokens": 0, "completion_tokens": 1, "calls": 1} for i in range(3000)]
    with django_assert_max_num_queries(4):  # prices, savepoint, one upsert, release
        ledger_write(rows)
    assert sorted(UsageLedger.objects.values_list("calls", flat=True)) == [1000, 1000, 1000]


def test_the_ledger_has_retention(alice, settings):
    settings.AIGEN = {**settings.AIGEN, "USAGE_RETENTION_DAYS": 30}
    today = datetime.now(UTC)
    usage_record(user_id=alice.pk, model="m", usage=TokenUsage(1, 1, 0), now=today - timedelta(days=40))
    usage_record(user_id=alice.pk, model="m", usage=TokenUsage(1, 1, 0), now=today - timedelta(days=2))
    usage_flush()
    assert telemetry_prune()["usage"] == 1
    assert list(UsageLedger.objects.values_list("day", flat=True)) == [(today - timedelta(days=2)).date()]


def test_prune_telemetry_takes_the_ledgers_own_age(alice):
    today = datetime.now(UTC)
    for days in (1, 5):
        usage_record(user_id=alice.pk, model="m", usage=TokenUsage(1, 1, 0), now=today - timedelta(days=days))
    usage_flush()
    out = StringIO()
    call_command("prune_telemetry", "--usage-older-than", "3d", stdout=out)
    assert "deleted 1 usage ledger row(s) older than 3 days" in out.getvalue()
    assert UsageLedger.objects.count() == 1
