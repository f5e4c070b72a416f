"""The generation service: caching, single-flight, records, streaming, and a
Redis that dies while generating."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.core.cache import cache

from aigen.exceptions import InvalidInput, ProviderError, ProviderUnavailable
from aigen.generation.providers import MOCK_MARK
from aigen.generation.records import generation_log, generation_records_flush
from aigen.generation.services import text_generate, text_generate_stream
from aigen.models import Generation
from resilience import upstream
from resilience.cache import reset_engines
from tests.support.fake_openai import CONTENT_PREFIX
from tests.support.fake_upstream import Reply

pytestmark = pytest.mark.django_db


def _generate(data, **kwargs):
    return text_generate(template_id="emergency_plan", section_id="2", data=data, **kwargs)


def test_mock_generation_then_cache_hit(section2_data, user):
    first = _generate(section2_data, user=user)
    assert first.content.startswith(MOCK_MARK)
    assert (first.cached, first.provider, first.model, first.section_title) == (False, "mock", "mock-1",
                                                                                "企业概况")
    assert first.usage.total_tokens > 0
    second = _generate(section2_data, user=user)
    assert second.cached is True
    assert second.content == first.content and second.cache_key == first.cache_key
    assert cache.get(first.cache_key)["content"] == first.content

    assert generation_records_flush() == 2
    rows = list(Generation.objects.order_by("id"))
    assert [r.cached for r in rows] == [False, True]
    assert all(r.user_id == user.pk and r.outcome == "ok" and r.cache_key == first.cache_key for r in rows)
    assert rows[0].total_tokens == first.usage.total_tokens and rows[1].total_tokens is None


def test_openai_generation_cached_the_second_time(openai_fake, section2_data):
    first = _generate(section2_data)
    assert first.content.startswith(CONTENT_PREFIX) and "示例化工有限公司" in first.content
    assert (first.provider, first.model, first.cached) == ("openai", "fake-model", False)
    # Written differently (order, spaces, an undeclared field): the same entry.
    info = section2_data["enterprise_info"]
    again = {"extra": 1, "enterprise_info": {k: f" {v} " if isinstance(v, str) else v
                                             for k, v in reversed(list(info.items()))}}
    second = _generate(again)
    assert second.cached is True and second.content == first.content
    assert openai_fake.chat_calls == 1


def test_use_cache_false_asks_again_and_refreshes(openai_fake, section2_data):
    first = _generate(section2_data)
    fresh = _generate(section2_data, use_cache=False)
    assert fresh.cached is False and openai_fake.chat_calls == 2
    assert _generate(section2_data).cached is True
    assert openai_fake.chat_calls == 2
    assert fresh.cache_key == first.cache_key


def test_errors_are_recorded(section2_data, openai_policy, openai_fake):
    section2_data["enterprise_info"]["employees_count"] = "many"
    with pytest.raises(InvalidInput):
        _generate(section2_data)
    openai_policy(retry_total=0, breaker_fail_max=1)
    section2_data["enterprise_info"]["employees_count"] = 5
    openai_fake.fail_next(Reply(500))
    with pytest.raises(ProviderError):
        _generate(section2_data)
    with pytest.raises(ProviderUnavailable):
        _generate(section2_data)
    generation_records_flush()
    rows = list(Generation.objects.order_by("id"))
    assert [(r.outcome, r.error_code) for r in rows] == [
        ("error", "invalid"), ("error", "provider_error"), ("error", "provider_unavailable")]
    assert "employees_count" in rows[0].error


def test_twenty_concurrent_identical_requests_make_one_provider_call(openai_fake, section2_data):
    upstream("openai")  # build the client (reads the policy row) on the test's own connection
    openai_fake.fail_next(Reply(200, delay=0.3))  # the answer is slow: everyone piles up behind it
    start = threading.Barrier(20)

    def request(_):
        start.wait()
        return _generate(section2_data)

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(request, range(20)))
    assert openai_fake.chat_calls == 1
    assert len({r.content for r in results}) == 1
    assert sum(not r.cached for r in results) == 1
    assert generation_log.pending() == 20


def test_waiters_share_the_leaders_failure(openai_policy, openai_fake, section2_data):
    openai_policy(retry_total=0)
    upstream("openai")
    openai_fake.fail_next(Reply(500, delay=0.3))
    start = threading.Barrier(5)

    def request(_):
        start.wait()
        try:
            return _generate(section2_data)
        except ProviderError as err:
            return err

    with ThreadPoolExecutor(max_workers=5) as pool:
        outcomes = list(pool.map(request, range(5)))
    assert all(isinstance(o, ProviderError) for o in outcomes)
    assert openai_fake.chat_calls == 1


def test_stream_then_cached(openai_fake):
    data = {"enterprise_info": {"enterprise_name": "流式公司", "industry_type": "制造"}}
    stream = text_generate_stream(template_id="emergency_plan", section_id="1", data=data)
    assert stream.meta["cached"] is False and stream.meta["section_title"] == "总则"
    chunks = list(stream)
    assert len(chunks) > 1
    assert stream.result.content == "".join(chunks) and stream.result.usage.total_tokens
    again = text_generate(template_id="emergency_plan", section_id="1", data=data)
    assert again.cached is True and again.content == "".join(chunks)
    hit = text_generate_stream(template_id="emergency_plan", section_id="1", data=data)
    assert hit.cached is True and list(hit) == [again.content]
    assert openai_fake.chat_calls == 1
    generation_records_flush()
    assert [(r.stream, r.cached) for r in Generation.objects.order_by("id")] == [
        (True, False), (False, True), (True, True)]


def test_abandoned_stream_is_not_cached(openai_fake, section2_data):
    stream = text_generate_stream(template_id="emergency_plan", section_id="2", data=section2_data)
    iterator = iter(stream)
    next(iterator)
    iterator.close()
    stream.close()
    assert _generate(section2_data).cached is False
    generation_records_flush()
    assert Generation.objects.filter(stream=True).get().outcome == "aborted"


def test_redis_dying_during_generation_still_answers(redis_process, openai_fake, section2_data, settings):
    settings.CACHES = {"default": {
        "BACKEND": "resilience.cache.FallbackCache", "LOCATION": redis_process.url, "KEY_PREFIX": "aigen",
        "OPTIONS": {"PROBE_INTERVAL": 30.0, "SOCKET_CONNECT_TIMEOUT": 0.2, "SOCKET_TIMEOUT": 0.2,
                    "STATS_FLUSH_INTERVAL": 60.0},
    }}
    reset_engines()
    try:
        before = _generate(section2_data)
        assert cache.backend_name == "redis" and before.cached is False
        assert _generate(section2_data).cached is True  # served by Redis

        other = {"enterprise_info": {**section2_data["enterprise_info"], "employees_count": 7}}
        openai_fake.fail_next(Reply(200, delay=0.3))
        killer = threading.Timer(0.1, redis_process.kill)  # dies while the provider is answering
        killer.start()
        during = _generate(other)
        killer.join()
        assert during.content.startswith(CONTENT_PREFIX) and during.cached is False
        assert cache.in_fallback is True

        assert _generate(other).cached is True  # kept in local memory meanwhile
        assert _generate(section2_data).cached is False  # Redis's copy is out of reach: regenerated
        assert openai_fake.chat_calls == 3
    finally:
        reset_engines()


def test_records_are_written_in_bulk_when_the_buffer_fills(monkeypatch, settings, section2_data):
    from aigen.generation.records import GenerationLog

    monkeypatch.setattr(GenerationLog, "autostart", True)
    settings.AIGEN = {**settings.AIGEN, "RECORD_FLUSH_INTERVAL": 0, "RECORD_BUFFER_MAX": 3}
    for _ in range(2):
        _generate(section2_data)
    assert Generation.objects.count() == 0 and generation_log.pending() == 2
    _generate(section2_data)
    assert Generation.objects.count() == 3 and generation_log.pending() == 0


def test_package_level_generate(section2_data):
    import aigen

    result = aigen.generate("emergency_plan", "2", section2_data)
    assert result.section_title == "企业概况" and result.cached is False
    assert aigen.generate("emergency_plan", "2", section2_data).cached is True


def test_admin_is_read_only(client, section2_data, django_user_model):
    admin = django_user_model.objects.create_superuser("boss", password="pw")
    _generate(section2_data)
    generation_records_flush()
    client.force_login(admin)
    row = Generation.objects.get()
    assert client.get("/admin/aigen/generation/").status_code == 200
    detail = client.get(f"/admin/aigen/generation/{row.pk}/change/")
    assert detail.status_code == 200 and b'name="_save"' not in detail.content
    assert client.get("/admin/aigen/generation/add/").status_code == 403
    assert client.post(f"/admin/aigen/generation/{row.pk}/delete/").status_code == 403


def test_on_redis_a_generation_leaves_the_loop_twice_and_a_cache_hit_once(section2_data, settings, redis_url):
    """The store work of an async generation rides in as few hops as it can (each hop is a
    thread handoff and a wake-up of the loop): the cache read with the single-flight lock, then
    the entry's write with the lock's release; a hit is the read alone."""
    import asyncio

    from aigen.generation.services import atext_generate

    settings.CACHES = {"default": {"BACKEND": "resilience.cache.FallbackCache", "LOCATION": redis_url,
                                   "KEY_PREFIX": "aigen-hops"}}
    reset_engines()
    hops: list[str] = []

    async def generate():
        loop = asyncio.get_running_loop()
        run = loop.run_in_executor

        def counted(executor, func, *args):
            hops.append(getattr(func, "__qualname__", repr(func)))
            return run(executor, func, *args)

        loop.run_in_executor = counted
        try:
            return await atext_generate(template_id="emergency_plan", section_id="2", data=section2_data)
        finally:
            del loop.run_in_executor

    try:
        first = asyncio.run(generate())
        assert first.cached is False and cache.backend_name == "redis"
        assert len(hops) == 2, hops
        assert cache.get(first.cache_key)["content"] == first.content  # kept in Redis by the second hop
        hops.clear()
        second = asyncio.run(generate())
        assert second.cached is True and second.content == first.content and len(hops) == 1, hops
    finally:
        cache.clear()
        reset_engines()
