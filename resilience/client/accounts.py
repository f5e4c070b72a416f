"""Accounts: endpoints whose credential is an OAuth2 access token the gateway
refreshes itself (issue 27), one `TokenManager` per account per process.

Kinds (`Endpoint.credential_kind`): `oauth2_refresh` (a refresh token, rotated
when the token server answers a new one) and `oauth2_client` (client
credentials: a client secret named by a declared environment variable, the
same allow-list as every credential variable). The grants are Authlib's
(`OAuth2Session.refresh_token` / `fetch_token`): the standard form-encoded
request; `access_token`, `expires_in` and a rotated `refresh_token` are used.

Ensure-valid (`TokenManager.token_now`, once per attempt): the token this
process holds is used while more than a fifth of its life (at most
`ACCOUNT_REFRESH_MARGIN_MAX` seconds) is left, with no round trip. When it is
due, the token shared through the cache (sealed) is read; if that is due too,
one process refreshes: the Redis lock `account:<id>` (resilience.client.locks; the
row's `select_for_update` without Redis) is tried without waiting while the
held token still lives (the others keep using it), and waited for only when
it has expired. Under the lock the row is read again (a refresh done
elsewhere is adopted, so no spent refresh token is ever sent), the grant is
made, and the new tokens are written sealed to the row and the cache before
the lock is released. Should the database refuse that write (busy or down
past its timeout), the process keeps the grant's answer and its next refresh
stores it (or grants with its rotated refresh token): the spent one in the
row is never sent.

A caller waits for a refresh at most its call's remaining deadline
(`budget`), whatever ACCOUNT_TOKEN_TIMEOUT allows the grant: the refresh
runs on this process's refresher threads, one at a time per account, and a
caller that gives up leaves it to finish and store its tokens (a grant cut
short after the token server rotated the refresh token would lose the new
one, and the account with it). The caller then has no live token: its
endpoint is unavailable for this attempt and the pool fails over.

A 401 on an account's token (`refresh_after_401`) refreshes only if the token
that failed is still the current one, else the newer one is reused; the
caller (resilience.client.core) retries once on the same account.

A failed refresh puts the account in backoff (`ACCOUNT_BACKOFF_BASE` doubled
per failure up to `ACCOUNT_BACKOFF_MAX`, with jitter) with its reason, in the
row and the cache so every process waits; `invalid_grant` also marks it
`needs_new_token` (it does not heal by itself: an operator sets a new refresh
token in the admin or through `manage.py endpoints_import`). An account with
no live token makes its endpoint unavailable, so the pool fails over. No
token ever reaches a log line, a reason or an error: reasons carry the token
server's error code or the exception's type only.
"""
from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import requests
from django.db import DatabaseError, connection, transaction

from resilience.cache import default_cache
from resilience.client import sealing
from resilience.client.locks import Lock, lock_backend
from resilience.conf import credential_refusal, resilience_settings
from resilience.models import Account, Endpoint

logger = logging.getLogger(__name__)

Kind = Endpoint.CredentialKind

#: The threads refreshes run on (a few: a refresh is one HTTP request per token lifetime).
_refresher = ThreadPoolExecutor(max_workers=4, thread_name_prefix="account-refresh")


@dataclass(frozen=True, slots=True)
class AccountSpec:
    """An account as configured (from its endpoint row)."""

    endpoint_id: int
    upstream: str
    name: str
    kind: str
    token_url: str
    client_id: str
    client_secret_env: str = ""
    scope: str = ""

    @classmethod
    def of(cls, row: Any, upstream: str) -> AccountSpec:
        return cls(row.pk, upstream, row.name, row.credential_kind, row.token_url, row.client_id,
                   row.client_secret_env, row.scope)


@dataclass(frozen=True, slots=True)
class Token:
    access: str
    expires_at: float  # wall clock
    lifetime: float

    def due(self, now: float) -> bool:
        margin = min(self.lifetime / 5, resilience_settings.ACCOUNT_REFRESH_MARGIN_MAX)
        return now >= self.expires_at - margin

    def live(self, now: float) -> bool:
        return now < self.expires_at


class RefreshFailed(Exception):
    """A grant that failed: `reason` names the cause (never a token)."""

    def __init__(self, reason: str, *, invalid_grant: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.invalid_grant = invalid_grant


def _stamp(moment: float | None) -> datetime | None:
    return None if moment is None else datetime.fromtimestamp(moment, tz=UTC)


def _seconds(moment: datetime | None) -> float:
    return moment.timestamp() if moment is not None else 0.0


def client_secret(spec: AccountSpec) -> str:
    """The client secret from its declared variable ("" when none or refused)."""
    if not spec.client_secret_env or credential_refusal(spec.client_secret_env):
        return ""
    return str((resilience_settings.SECRETS or {}).get(spec.client_secret_env, "") or "")


def grant(spec: AccountSpec, refresh_token: str) -> dict[str, Any]:
    """One grant at the token server (Authlib): the token answer, or
    `RefreshFailed` with a reason that names no token."""
    secret = client_secret(spec)
    if spec.client_secret_env and not secret:
        raise RefreshFailed(f"client secret variable {spec.client_secret_env} is empty or refused")
    # Imported at the first grant, not with the module: Authlib is a hundred modules (about 10 MB per
    # worker) that a gateway without OAuth2 accounts never needs.
    from authlib.common.errors import AuthlibBaseError
    from authlib.integrations.requests_client import OAuth2Session

    session = OAuth2Session(client_id=spec.client_id, client_secret=secret or None, scope=spec.scope or None,
                            token_endpoint_auth_method="client_secret_post" if secret else "none")
    timeout = resilience_settings.ACCOUNT_TOKEN_TIMEOUT
    try:
        with session:
            if spec.kind == Kind.OAUTH2_CLIENT:
                answer = session.fetch_token(spec.token_url, grant_type="client_credentials", timeout=timeout)
            else:
                if not refresh_token:
                    raise RefreshFailed("no refresh token stored", invalid_grant=True)
                answer = session.refresh_token(spec.token_url, refresh_token=refresh_token, timeout=timeout)
    except AuthlibBaseError as err:
        code = str(getattr(err, "error", "") or "oauth_error")[:60]
        raise RefreshFailed(f"token server refused: {code}", invalid_grant=code == "invalid_grant") from None
    except requests.RequestException as err:
        raise RefreshFailed(f"token server unreachable ({type(err).__name__})") from None
    except ValueError as err:  # a body that is not the token JSON
        raise RefreshFailed(f"token server answered no token ({type(err).__name__})") from None
    if not answer.get("access_token"):
        raise RefreshFailed("token server answered no access_token")
    return dict(answer)


@contextlib.contextmanager
def _row_locking_transaction() -> Iterator[None]:
    """`transaction.atomic()` whose `select_for_update` holds the row until the
    refresh is stored. SQLite has no row locks: there the transaction begins
    IMMEDIATE, taking the file's write lock at once, which serialises refreshes
    across the processes sharing the file (`make run` and its jobs worker) as
    the row lock does on PostgreSQL. A deferred transaction would read, then be
    refused its write at once ("database is locked") when another refresh
    wrote meanwhile, after the token server had rotated the refresh token: the
    new one lost, and the account with it on its next refresh (a spent token
    revokes the family)."""
    if connection.vendor != "sqlite" or connection.in_atomic_block:
        with transaction.atomic():
            yield
        return
    connection.ensure_connection()
    mode = connection.transaction_mode
    connection.transaction_mode = "IMMEDIATE"  # this thread's connection, for the BEGIN atomic() sends
    try:
        with transaction.atomic():
            connection.transaction_mode = mode  # begun: later transactions as configured
            yield
    finally:
        connection.transaction_mode = mode


class TokenManager:
    """One account's tokens in this process (see the module docstring)."""

    clock = staticmethod(time.time)
    random = random.Random()

    def __init__(self, spec: AccountSpec) -> None:
        self.spec = spec
        self.token: Token | None = None
        self.backoff_until = 0.0
        self.reason = ""
        self._failed_token = ""  # the token a 401 refused (set under `_guard`)
        # A grant whose tokens the database refused (its answer, when it was made): the token
        # server rotated the refresh token, so the next refresh stores this one, never the row's.
        self._unstored: tuple[dict[str, Any], float] | None = None
        self._guard = threading.Lock()
        # The refresh running on the refresher threads: (its future, waited for, the token that failed).
        self._pending: tuple[Future[Token | None], bool, str] | None = None
        self._pending_lock = threading.Lock()

    @property
    def cache_key(self) -> str:
        return f"account:{self.spec.endpoint_id}:token"

    @property
    def backoff_key(self) -> str:
        return f"account:{self.spec.endpoint_id}:backoff"

    # -- the hot path ------------------------------------------------------------------------
    def token_now(self, budget: float | None = None) -> str:
        """A live access token ("" when there is none: the endpoint is then
        unavailable and the pool fails over). `budget`: the most seconds the
        caller waits for a refresh (its call's remaining deadline)."""
        now = self.clock()
        token = self.token
        if token is not None and not token.due(now):
            return token.access
        token = self._adopt(self._shared())
        if token is not None and not token.due(now):
            return token.access
        live = token is not None and token.live(now)
        if now < self.backoff_until or self._shared_backoff():
            return token.access if live else ""  # type: ignore[union-attr]
        token = self.refresh_within(budget, wait=not live)
        return token.access if token is not None and token.live(self.clock()) else ""

    def token_held(self) -> str:
        """The token this process holds while it is not due ("" otherwise): no I/O."""
        token = self.token
        return token.access if token is not None and not token.due(self.clock()) else ""

    def looks_usable(self) -> bool:
        """From process memory only: a live token, or a refresh allowed."""
        now = self.clock()
        return (self.token is not None and self.token.live(now)) or now >= self.backoff_until

    def refresh_after_401(self, failed: str, budget: float | None = None) -> str:
        """After a 401 with `failed`: a newer token if another refresh made
        one, else one refresh now, waited for at most `budget` seconds; ""
        when none could be had."""
        current = self._adopt(self._shared())
        if current is not None and current.access != failed and current.live(self.clock()):
            return current.access
        if self.clock() < self.backoff_until:
            return ""
        token = self.refresh_within(budget, wait=True, failed=failed)
        return token.access if token is not None and token.access != failed else ""

    # -- sharing -----------------------------------------------------------------------------
    def _adopt(self, token: Token | None) -> Token | None:
        if token is not None and (self.token is None or token.expires_at > self.token.expires_at):
            self.token = token
        return self.token

    def _shared(self) -> Token | None:
        sealed = default_cache().get(self.cache_key)
        if not sealed:
            return None
        try:
            data = json.loads(sealing.unseal(sealed))
        except (sealing.SealBroken, ValueError):
            return None
        return Token(data["a"], float(data["e"]), float(data["l"]))

    def _share(self, token: Token) -> None:
        ttl = max(1, int(token.expires_at - self.clock()))
        payload = json.dumps({"a": token.access, "e": token.expires_at, "l": token.lifetime})
        default_cache().set(self.cache_key, sealing.seal(payload), timeout=ttl)

    def _shared_backoff(self) -> bool:
        until = default_cache().get(self.backoff_key)
        if until and until > self.clock():
            self.backoff_until = max(self.backoff_until, float(until))
            return True
        return False

    # -- refreshing --------------------------------------------------------------------------
    def refresh_within(self, budget: float | None, *, wait: bool, failed: str = "") -> Token | None:
        """`refresh` on the refresher threads, waited for at most `budget`
        seconds (None: until it ends): the token after it, or the one held
        when the caller gives up. A caller whose token still lives never
        waits for a refresh another thread of this process is making."""
        with self._pending_lock:
            pending = self._pending
            running = pending is not None and not pending[0].done()
            if running and not wait:
                return self.token
            if not running or pending[1:] != (wait, failed):  # type: ignore[index]
                pending = self._pending = (_refresher.submit(self._refresh_job, wait, failed), wait, failed)
        try:
            return pending[0].result(timeout=None if budget is None else max(0.0, budget))  # type: ignore[index]
        except FutureTimeout:
            return self.token

    def _refresh_job(self, wait: bool, failed: str) -> Token | None:
        try:
            return self.refresh(wait=wait, failed=failed)
        except DatabaseError as err:  # busy or down past its timeout: the next call tries again
            logger.warning("account %s/%s: refresh not made (database %s)", self.spec.upstream,
                           self.spec.name, type(err).__name__)
            return self.token
        finally:
            connection.close()  # this thread's connection; a refresh is rare

    def refresh(self, *, wait: bool, failed: str = "") -> Token | None:
        """Refresh once across every process (see the module docstring): the
        token after it (adopted or new), or None when none could be had."""
        if not self._guard.acquire(blocking=wait):
            return self.token
        self._failed_token = failed
        try:
            if lock_backend() == "redis":
                timeout = resilience_settings.ACCOUNT_TOKEN_TIMEOUT
                held = Lock(f"account:{self.spec.endpoint_id}", timeout=timeout + 5,
                            blocking_timeout=timeout + 1 if wait else 0)
                if not held.acquire():
                    return self._adopt(self._shared())
                try:
                    return self._refresh_row(lock_row=False)
                finally:
                    held.release()
            return self._refresh_row(lock_row=True)
        finally:
            self._guard.release()

    def _refresh_row(self, *, lock_row: bool) -> Token | None:
        """Under the Redis lock (`lock_row` False) each statement commits on
        its own, so a busy SQLite file makes a write wait its timeout rather
        than fail a read-then-write transaction; without Redis the row's lock
        holds for the whole refresh (`_row_locking_transaction`)."""
        if not lock_row:
            return self._refresh_locked(Account.objects.filter(endpoint_id=self.spec.endpoint_id).first())
        with _row_locking_transaction():
            row = Account.objects.select_for_update().filter(endpoint_id=self.spec.endpoint_id).first()
            return self._refresh_locked(row)

    def _refresh_locked(self, row: Account | None) -> Token | None:
        if row is None:
            row = Account.objects.create(endpoint_id=self.spec.endpoint_id)
        now = self.clock()
        stored = self._stored(row)
        if stored is not None and stored.access != self._failed_token and not stored.due(now):
            self._adopt(stored)  # refreshed elsewhere meanwhile
            self._share(stored)
            return self.token
        if row.needs_new_token or _seconds(row.backoff_until) > now:
            self.backoff_until = max(self.backoff_until, _seconds(row.backoff_until))
            self.reason = row.failure_reason
            return self.token
        unstored = self._unstored
        if unstored is not None and not self._answered(*unstored).due(now):
            answer, granted_at = unstored  # still live: stored now, no grant
        else:
            refresh = (unstored[0].get("refresh_token") if unstored else None) or \
                sealing.unseal(row.refresh_token_sealed)
            try:
                answer, granted_at = grant(self.spec, refresh), now
            except RefreshFailed as failure:
                self._failed(row, failure)
                return self.token
        self._unstored = (answer, granted_at)
        token = self._store(row, answer, granted_at)
        self._unstored = None
        self._share(token)
        return token

    @staticmethod
    def _answered(answer: dict[str, Any], granted_at: float) -> Token:
        lifetime = float(answer.get("expires_in") or 3600)
        return Token(str(answer["access_token"]), granted_at + lifetime, lifetime)

    def _stored(self, row: Account) -> Token | None:
        if not row.access_token_sealed or row.expires_at is None:
            return None
        try:
            return Token(sealing.unseal(row.access_token_sealed), _seconds(row.expires_at), row.lifetime)
        except sealing.SealBroken:
            return None

    def _store(self, row: Account, answer: dict[str, Any], granted_at: float) -> Token:
        token = self._answered(answer, granted_at)
        row.access_token_sealed = sealing.seal(token.access)
        if answer.get("refresh_token"):
            row.refresh_token_sealed = sealing.seal(str(answer["refresh_token"]))
        row.expires_at, row.lifetime = _stamp(token.expires_at), token.lifetime
        row.last_refresh_at = _stamp(granted_at)
        row.refreshes += 1
        row.failures, row.failure_reason, row.backoff_until, row.needs_new_token = 0, "", None, False
        row.save()
        self.token, self.backoff_until, self.reason = token, 0.0, ""
        logger.info("account %s/%s: access token refreshed (valid %.0f s)", self.spec.upstream,
                    self.spec.name, token.lifetime)
        return token

    def _failed(self, row: Account, failure: RefreshFailed) -> None:
        row.failures += 1
        base, cap = resilience_settings.ACCOUNT_BACKOFF_BASE, resilience_settings.ACCOUNT_BACKOFF_MAX
        seconds = min(cap, base * 2 ** (row.failures - 1)) * (0.5 + self.random.random() / 2)
        now = self.clock()
        row.failure_reason, row.backoff_until = failure.reason[:300], _stamp(now + seconds)
        row.needs_new_token = row.needs_new_token or failure.invalid_grant
        row.save()
        self.backoff_until, self.reason = now + seconds, failure.reason
        default_cache().set(self.backoff_key, now + seconds, timeout=max(1, int(seconds) + 1))
        logger.warning("account %s/%s: refresh failed (%s)%s; next try in %.1f s", self.spec.upstream,
                       self.spec.name, failure.reason,
                       ": needs a new refresh token" if row.needs_new_token else "", seconds)


_managers: dict[int, TokenManager] = {}
_managers_lock = threading.Lock()


def account_manager(spec: AccountSpec) -> TokenManager:
    """This process's manager of the account `spec` (kept across policy
    reloads, so a rebuilt pool keeps its token)."""
    with _managers_lock:
        manager = _managers.get(spec.endpoint_id)
        if manager is None or manager.spec != spec:
            previous = manager
            manager = _managers[spec.endpoint_id] = TokenManager(spec)
            if previous is not None:
                manager.token = previous.token
        return manager


def accounts_forget() -> None:
    """Drop every manager of this process (tests, after a fork)."""
    with _managers_lock:
        _managers.clear()


def account_state(row: Any) -> dict[str, Any] | None:
    """An endpoint row's account state for displays (no token), or None
    when its credential is an environment variable."""
    if getattr(row, "credential_kind", Kind.ENV) == Kind.ENV:
        return None
    account = Account.objects.filter(endpoint_id=row.pk).first()
    now = time.time()
    if account is None:
        return {"kind": row.credential_kind, "state": "no_token", "expires_at": None, "expires_in": None,
                "last_refresh_at": None, "refreshes": 0, "failures": 0, "failure_reason": "",
                "needs_new_token": row.credential_kind == Kind.OAUTH2_REFRESH, "has_refresh_token": False}
    expires = _seconds(account.expires_at)
    if account.needs_new_token:
        state = "needs_new_token"
    elif _seconds(account.backoff_until) > now:
        state = "backoff"
    elif account.failures:  # its last refresh failed, whatever the token's clock says (a 401 may have)
        state = "failing"
    elif expires > now:
        state = "ok"
    else:
        state = "expired" if account.expires_at else "no_token"
    return {"kind": row.credential_kind, "state": state,
            "expires_at": account.expires_at.isoformat() if account.expires_at else None,
            "expires_in": round(expires - now, 1) if account.expires_at else None,
            "last_refresh_at": account.last_refresh_at.isoformat() if account.last_refresh_at else None,
            "refreshes": account.refreshes, "failures": account.failures,
            "failure_reason": account.failure_reason, "needs_new_token": account.needs_new_token,
            "has_refresh_token": bool(account.refresh_token_sealed)}


def accounts_summary(endpoints: Any) -> str:
    """One line for the dashboard card: the accounts by state, naming those
    that need a new refresh token or are failing, with the reason ("" when
    the upstream has no account)."""
    states = [(row.name, state) for row in endpoints if (state := account_state(row)) is not None]
    if not states:
        return ""
    counts: dict[str, int] = {}
    for _, state in states:
        counts[state["state"]] = counts.get(state["state"], 0) + 1
    line = ", ".join(f"{count} {name.replace('_', ' ')}" for name, count in sorted(counts.items()))
    trouble = [f"{name}: {state['failure_reason'] or state['state']}" for name, state in states
               if state["state"] != "ok"]
    return line + (f" ({'; '.join(trouble)})" if trouble else "")


def account_refresh_token_set(*, endpoint: Any, refresh_token: str) -> None:
    """Store a new refresh token for `endpoint` (sealed), clearing its
    failure state and its access token, so the next call refreshes."""
    Account.objects.update_or_create(endpoint_id=endpoint.pk, defaults={
        "refresh_token_sealed": sealing.seal(refresh_token), "access_token_sealed": "", "expires_at": None,
        "lifetime": 0.0, "failures": 0, "failure_reason": "", "backoff_until": None,
        "needs_new_token": False})
    default_cache().delete_many([f"account:{endpoint.pk}:token", f"account:{endpoint.pk}:backoff"])
    logger.info("account %s: new refresh token set", endpoint)
