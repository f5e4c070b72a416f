"""API tokens hashed at rest (issue 23, M6, L5): only digests are stored, old
DRF keys keep working through the migration, the admin never shows a token,
and a revoked token stops working on every route: at once in the process
that revoked it, within the check interval in every other one (a movable
clock here; several real worker processes in tests/acceptance/test_tokens_live.py)."""
from __future__ import annotations

import hashlib
import importlib

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.apps import apps
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import AsyncClient, Client
from django.urls import reverse
from rest_framework.authtoken.models import Token

from aigen.edge import tokens
from aigen.edge.tokens import GENERATION_KEY, token_digest, token_issue, token_revoke
from aigen.models import ApiToken
from resilience.cache import default_cache

pytestmark = pytest.mark.django_db

DRF_ROUTE = "/api/ai/templates"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    moved = Clock()
    monkeypatch.setattr(tokens.TokenUsers, "clock", staticmethod(moved))
    tokens.users.clear()
    yield moved
    tokens.users.clear()


@pytest.fixture
def alice(db):
    return get_user_model().objects.create_user("alice")


def drf(key: str) -> int:
    return Client(HTTP_AUTHORIZATION=f"Bearer {key}").get(DRF_ROUTE).status_code


def generate(key: str) -> int:
    """The async view: 400 (the empty body) once authentication passed."""
    return async_to_sync(AsyncClient().post)("/api/ai/generate", data={}, content_type="application/json",
                                             headers={"Authorization": f"Bearer {key}"}).status_code


def models(key: str) -> int:
    response = async_to_sync(AsyncClient().get)("/v1/models", headers={"Authorization": f"Bearer {key}"})
    return response.status_code


def test_only_a_digest_and_a_prefix_are_stored(alice):
    key = token_issue(user=alice)
    row = ApiToken.objects.get(user=alice)
    assert row.digest == hashlib.sha256(key.encode()).hexdigest() and row.prefix == key[:8]
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM aigen_apitoken")
        stored = repr(cursor.fetchall())
    assert key not in stored and not Token.objects.exists()
    assert (drf(key), generate(key), models(key)) == (200, 400, 200)


def test_the_migration_hashes_existing_drf_keys_and_they_keep_working(alice):
    bob = get_user_model().objects.create_user("bob")
    old = {user.pk: Token.objects.create(user=user).key for user in (alice, bob)}
    migration = importlib.import_module("aigen.migrations.0002_hashed_tokens")
    migration.hash_existing_tokens(apps, None)
    assert not Token.objects.exists()  # no clear key left at rest
    assert {r.user_id: (r.digest, r.prefix) for r in ApiToken.objects.all()} == {
        pk: (token_digest(key), key[:8]) for pk, key in old.items()}
    for key in old.values():
        assert (drf(key), generate(key), models(key)) == (200, 400, 200)


def test_a_token_revoked_here_stops_at_once_on_every_route(alice, clock):
    key = token_issue(user=alice)
    assert (drf(key), generate(key), models(key)) == (200, 400, 200)
    token_revoke(user=alice)
    assert (drf(key), generate(key), models(key)) == (401, 401, 401)


def test_a_token_revoked_elsewhere_stops_within_the_check_interval(alice, clock, settings):
    """Another worker deleted it: this process learns it from the shared generation key."""
    settings.AIGEN = {**settings.AIGEN, "TOKEN_CHECK_INTERVAL": 0.5}
    key = token_issue(user=alice)
    assert (drf(key), generate(key)) == (200, 400)  # kept in process now
    with connection.cursor() as cursor:  # as another process would: no signal reaches this one
        cursor.execute("DELETE FROM aigen_apitoken WHERE user_id = %s", [alice.pk])
    default_cache().set(GENERATION_KEY, "moved elsewhere", timeout=None)
    clock.now += 0.3  # before the interval's last quarter, where the async face checks ahead
    assert (drf(key), generate(key)) == (200, 400)  # not re-read yet: no cache read per request
    clock.now += 0.2
    assert (drf(key), generate(key), models(key)) == (401, 401, 401)


def test_without_a_shared_cache_a_kept_user_lives_one_interval(alice, clock, settings, monkeypatch):
    settings.AIGEN = {**settings.AIGEN, "TOKEN_CHECK_INTERVAL": 0.5}
    monkeypatch.setattr(tokens, "cache_is_shared", lambda store: False)
    key = token_issue(user=alice)
    assert drf(key) == 200
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM aigen_apitoken WHERE user_id = %s", [alice.pk])
    assert drf(key) == 200
    clock.now += 0.5
    assert drf(key) == 401


def test_a_deactivated_user_is_refused_at_once(alice, clock):
    key = token_issue(user=alice)
    assert (drf(key), generate(key)) == (200, 400)
    alice.is_active = False
    alice.save()
    assert (drf(key), generate(key)) == (401, 401)


def test_the_admin_lists_tokens_by_prefix_and_revokes_but_never_shows_or_adds(alice, clock):
    key = token_issue(user=alice)
    admin = Client()
    admin.force_login(get_user_model().objects.create_superuser("root", "root@example.com", "pw-root-123"))
    listing = admin.get(reverse("admin:aigen_apitoken_changelist")).content.decode()
    assert key[:8] in listing and key not in listing and token_digest(key) not in listing
    assert admin.get(reverse("admin:aigen_apitoken_add")).status_code == 403
    # DRF's own token admin (keys in clear) is gone.
    assert admin.get("/admin/authtoken/tokenproxy/").status_code == 404
    row = ApiToken.objects.get(user=alice)
    page = admin.get(reverse("admin:aigen_apitoken_change", args=[row.pk])).content.decode()
    assert key not in page and token_digest(key) not in page
    admin.post(reverse("admin:aigen_apitoken_delete", args=[row.pk]), {"post": "yes"})
    assert not ApiToken.objects.exists() and drf(key) == 401


def test_kept_users_stay_kept_while_the_generation_holds(alice, clock, settings, monkeypatch,
                                                         django_assert_num_queries):
    """With a shared cache: one cache read per interval and no query while nothing was
    revoked (the key never set, as on a fresh deployment)."""
    settings.AIGEN = {**settings.AIGEN, "TOKEN_CHECK_INTERVAL": 0.5}
    monkeypatch.setattr(tokens, "cache_is_shared", lambda store: True)  # one process: it is
    default_cache().delete(GENERATION_KEY)
    key = token_issue(user=alice)
    assert tokens.token_user(key) is not None
    for _ in range(3):
        clock.now += 1.0  # a check each time
        with django_assert_num_queries(0):
            assert tokens.token_user(key).pk == alice.pk


def test_each_call_gets_its_own_copy_of_the_kept_user(alice, clock):
    key = token_issue(user=alice)
    first, second = tokens.token_user(key), tokens.token_user(key)
    assert first is not second and first == second == alice
    assert first._state is not second._state and not first._state.adding
    first._perm_cache = {"granted"}  # what a permission check caches on its user
    first._state.fields_cache["probe"] = object()
    assert not hasattr(second, "_perm_cache") and "probe" not in second._state.fields_cache
    assert tokens.token_of(first) is not None and tokens.token_of(first) == tokens.token_of(second)
    assert tokens.token_of(first).digest == token_digest(key)


def test_on_the_loop_the_generation_is_checked_ahead_and_never_used_past_its_interval(alice, clock,
                                                                                       settings):
    """resilience.client.ahead: a call in the last quarter of the check interval starts the check in
    a thread and is served with the kept user; the check drops it (moved elsewhere), so the next
    call within the interval is refused. A call past the interval still checks first."""
    import asyncio

    settings.AIGEN = {**settings.AIGEN, "TOKEN_CHECK_INTERVAL": 0.5}
    key = token_issue(user=alice)

    def revoked_elsewhere() -> None:
        with connection.cursor() as cursor:  # as another process would: no signal reaches this one
            cursor.execute("DELETE FROM aigen_apitoken WHERE user_id = %s", [alice.pk])
        default_cache().set(GENERATION_KEY, "moved elsewhere", timeout=None)

    async def run() -> list:
        seen = [await tokens.atoken_user(key) is not None]  # checked, looked up, kept
        await sync_to_async(revoked_elsewhere)()
        clock.now += 0.2
        seen.append(await tokens.atoken_user(key) is not None)  # early in the interval: kept
        clock.now += 0.2  # 0.4 of 0.5: this call starts the check in a thread
        await tokens.atoken_user(key)  # kept or not: that depends on whether the thread came first
        for _ in range(500):
            if tokens.users._checked_at == clock.now:
                break
            await asyncio.sleep(0.01)
        seen.append(tokens.users._checked_at == clock.now)  # checked ahead, within the interval
        seen.append(await tokens.atoken_user(key) is not None)
        return seen

    assert async_to_sync(run)() == [True, True, True, False]
