"""resilience.locks on each backend: Redis (real server), PostgreSQL advisory
locks, and the process-local lock (expiry and extension with a moved clock)."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest
import redis

from resilience.client import locks as locks_module
from resilience.client.locks import lock_stats_store
from resilience.locks import Lock, LockNotAcquired, lock, lock_stats


@pytest.fixture
def clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(locks_module._LocalLocks, "clock", staticmethod(lambda: now[0]))
    locks_module.local_locks._held.clear()
    return now


def test_local_lock_excludes_expires_and_extends_with_a_moved_clock(clock):
    first = Lock("report", timeout=10, blocking_timeout=0, extend=False, backend="local")
    second = Lock("report", timeout=10, blocking_timeout=0, extend=False, backend="local")
    assert first.acquire() and not second.acquire()
    clock[0] += 9
    assert first.extend_now()  # the watchdog's move: ten more seconds from now
    clock[0] += 9
    assert not second.acquire()
    clock[0] += 2  # past the extended expiry
    assert second.acquire()
    assert first.release() is False  # no longer ours: the holder learns it lost the lock
    assert second.release() is True


def test_only_the_holder_releases(clock):
    holder = Lock("x", blocking_timeout=0, extend=False, backend="local")
    other = Lock("x", blocking_timeout=0, extend=False, backend="local")
    assert holder.acquire()
    other.held = True  # pretend: a release with another token
    assert other.release() is False
    assert not Lock("x", blocking_timeout=0, extend=False, backend="local").acquire()
    assert holder.release()


@pytest.mark.sqlite  # the local backend is the SQLite default; PostgreSQL's is tested below
def test_context_manager_and_decorator(clock, settings):
    settings.REDIS_URL = ""
    calls = []

    @lock("job", blocking_timeout=0)
    def work():
        calls.append(1)
        with pytest.raises(LockNotAcquired) as err, lock("job", blocking_timeout=0):
            pass
        assert err.value.code == "lock_not_acquired" and err.value.status == 409

    work()
    work()
    assert calls == [1, 1]


@pytest.fixture
def on_redis(settings, redis_url):
    settings.REDIS_URL = redis_url
    yield redis.Redis.from_url(redis_url)


def test_redis_lock_is_exclusive_with_a_token(on_redis):
    first = Lock("r1", timeout=5, blocking_timeout=0, extend=False)
    assert first.backend == "redis" and first.acquire()
    assert on_redis.get(f"{first_prefix()}:lock:r1") == first.token.encode()
    assert not Lock("r1", timeout=5, blocking_timeout=0.05).acquire()  # waits 50 ms, gives up
    assert first.release()
    assert on_redis.get(f"{first_prefix()}:lock:r1") is None


def first_prefix() -> str:
    from django.conf import settings

    return settings.CACHE_KEY_PREFIX


def test_redis_lock_expires_without_the_watchdog(on_redis):
    holder = Lock("r2", timeout=0.15, blocking_timeout=0, extend=False)
    assert holder.acquire()
    time.sleep(0.25)  # past its TTL: a dead holder loses it
    taker = Lock("r2", timeout=5, blocking_timeout=0, extend=False)
    assert taker.acquire()
    assert holder.release() is False  # the token no longer matches: nothing deleted
    assert taker.release() is True


def test_redis_watchdog_keeps_extending_while_held(on_redis):
    holder = Lock("r3", timeout=0.3, blocking_timeout=0, extend=True)
    assert holder.acquire()
    time.sleep(0.5)  # well past one TTL
    assert not Lock("r3", timeout=5, blocking_timeout=0, extend=False).acquire()
    assert 0 < on_redis.pttl(f"{first_prefix()}:lock:r3") <= 300
    assert holder.release() is True


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_postgresql_advisory_lock_across_connections(settings):
    settings.REDIS_URL = ""
    holder = Lock("pg", blocking_timeout=0)
    assert holder.backend == "postgresql" and holder.acquire()
    seen = {}

    def other_thread():  # another thread: another connection, another session
        from django.db import connections

        seen["got"] = Lock("pg", blocking_timeout=0.05).acquire()
        connections.close_all()

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join()
    assert seen["got"] is False
    assert holder.release() is True


# -- async with, names from arguments, counters (on the real Redis) ------------------------------
def test_async_with_excludes_and_releases(on_redis):
    async def scenario():
        async with lock("a1", blocking_timeout=0) as held:
            assert held.backend == "redis" and held.held
            with pytest.raises(LockNotAcquired):
                async with lock("a1", blocking_timeout=0):
                    pass
        async with lock("a1", blocking_timeout=0):  # released on exit: free again
            return True

    assert asyncio.run(scenario())


def test_a_decorated_call_locks_per_argument(on_redis):
    inside: list[str] = []

    @lock("user:{user_id}", blocking_timeout=0)
    def sync_user(*, user_id: int, note: str = "") -> str:
        inside.append(f"{user_id}")
        # Another user is not blocked by this one; the same user is.
        assert Lock("user:99", blocking_timeout=0, extend=False).acquire()
        with pytest.raises(LockNotAcquired), lock(f"user:{user_id}", blocking_timeout=0):
            pass
        return "done"

    assert sync_user(user_id=7) == "done"
    assert inside == ["7"]


def test_an_async_decorated_call_locks_per_argument(on_redis):
    @lock("tenant:{tenant}:export", blocking_timeout=0)
    async def export(tenant: str) -> str:
        assert on_redis.get(f"{first_prefix()}:lock:tenant:{tenant}:export") is not None
        return tenant

    assert asyncio.run(export("acme")) == "acme"
    assert on_redis.get(f"{first_prefix()}:lock:tenant:acme:export") is None


def test_a_name_field_that_is_not_a_parameter_is_refused_when_decorating():
    with pytest.raises(TypeError, match="'user' is not a parameter of"):
        @lock("user:{user}")
        def work(*, user_id: int) -> None: ...


def test_counters_say_acquired_contended_waited_and_expired(on_redis):
    lock_stats_store.reset()
    holder = Lock("c1", timeout=0.2, blocking_timeout=0, extend=False)
    assert holder.acquire()
    assert not Lock("c1", timeout=5, blocking_timeout=0.1, extend=False).acquire()  # waits, gives up
    time.sleep(0.25)  # the holder's TTL runs out
    assert holder.release() is False
    stats = lock_stats()
    assert stats["acquired"] == 1 and stats["contended"] == 1 and stats["not_acquired"] == 1
    assert stats["expired"] == 1 and stats["waited"] > 0
