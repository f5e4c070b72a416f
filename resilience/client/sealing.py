"""Sealing: the encryption of accounts' tokens at rest (database, cache).

Owns the `MultiFernet` built from `CREDENTIALS_KEYS` (read through
`resilience_settings`): the first key encrypts, every key decrypts, so keys
rotate by putting a new one first and running `manage.py credentials_rotate`
(`reseal` re-encrypts a value under the first key). Without keys, under DEBUG
(`make run`) a development key is derived from SECRET_KEY and one line says
so; otherwise `sealer()` raises `SealingUnavailable` (and the deploy check
refuses stored accounts, resilience.checks). A value no key opens raises
`SealBroken`; neither error ever carries the value. Imported by the client
room (accounts) and the commands, nothing else.
"""
from __future__ import annotations

import base64
import hashlib
import logging
import threading

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings

from resilience import exceptions as errors
from resilience.conf import resilience_settings

logger = logging.getLogger(__name__)


class SealingUnavailable(errors.AppError):
    """No CREDENTIALS_KEYS outside DEBUG: accounts' tokens cannot be stored."""

    code = "credentials_keys_missing"
    status = 503


class SealBroken(errors.AppError):
    """A sealed value no configured key opens (the key was dropped too early)."""

    code = "credentials_seal_broken"
    status = 503


_built: dict[tuple[str, ...], MultiFernet] = {}
_lock = threading.Lock()


def configured_keys() -> list[str]:
    keys = resilience_settings.CREDENTIALS_KEYS or []
    if isinstance(keys, str):
        keys = keys.split(",")
    return [key.strip() for key in keys if key and key.strip()]


def development_key() -> str:
    """A Fernet key derived from SECRET_KEY (DEBUG only: it moves with it)."""
    digest = hashlib.sha256(b"resilience-credentials:" + settings.SECRET_KEY.encode()).digest()
    return base64.urlsafe_b64encode(digest).decode()


def sealer() -> MultiFernet:
    """The MultiFernet for the configured keys (see the module docstring)."""
    keys = tuple(configured_keys())
    if not keys:
        if not settings.DEBUG:
            raise SealingUnavailable(
                "CREDENTIALS_KEYS is not set: accounts' tokens cannot be sealed (set one or more "
                "Fernet keys, comma-separated)")
        keys = (development_key(),)
    with _lock:
        found = _built.get(keys)
        if found is None:
            if keys == (development_key(),) and not configured_keys():
                logger.warning("CREDENTIALS_KEYS not set: sealing accounts' tokens with a development key "
                               "derived from SECRET_KEY (DEBUG only)")
            try:
                found = MultiFernet([Fernet(key.encode()) for key in keys])
            except ValueError as err:
                raise SealingUnavailable(
                    f"CREDENTIALS_KEYS holds a key that is not a Fernet key ({err})") from None
            _built.clear()
            _built[keys] = found
    return found


def seal(value: str) -> str:
    """`value` encrypted under the first key ("" stays "")."""
    return sealer().encrypt(value.encode()).decode() if value else ""


def unseal(sealed: str) -> str:
    """The clear value of `sealed` ("" stays ""); `SealBroken` when no key opens it."""
    if not sealed:
        return ""
    try:
        return sealer().decrypt(sealed.encode()).decode()
    except InvalidToken:
        raise SealBroken("a sealed credential opens with none of CREDENTIALS_KEYS") from None


def reseal(sealed: str) -> str:
    """`sealed` re-encrypted under the first key (key rotation)."""
    if not sealed:
        return ""
    try:
        return sealer().rotate(sealed.encode()).decode()
    except InvalidToken:
        raise SealBroken("a sealed credential opens with none of CREDENTIALS_KEYS") from None
