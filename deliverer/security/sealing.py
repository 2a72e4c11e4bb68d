"""Endpoint secrets at rest: sealed with Fernet (AES-128-CBC + HMAC-SHA256, from the
``cryptography`` package) under keys that live only in the environment.

DELIVERER_SECRET_KEYS holds one or more comma-separated Fernet keys. The first
seals; every one unseals, so keys rotate by putting a new key first, and
dropping the old one once ``deliverer reseal`` has re-sealed every secret.
A database dump without the keys reveals no secret.

Stored form: ``fernet:<token>``. A value without that prefix is a secret stored
before sealing existed; it is read as it is and sealed by ``deliverer reseal``.
"""

import base64
import functools
import os
import secrets

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

ENV = "DELIVERER_SECRET_KEYS"
PREFIX = "fernet:"


class SealingError(RuntimeError):
    """Secrets cannot be sealed or unsealed with the configured keys; the message says why."""


def new_key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def _box(raw: str | None) -> MultiFernet:
    return _box_for(os.environ.get(ENV) if raw is None else raw)


@functools.lru_cache(maxsize=4)
def _box_for(raw: str | None) -> MultiFernet:
    if not raw or not raw.strip():
        raise SealingError(f"{ENV} is not set: endpoint secrets are stored encrypted and need a key. "
                           f"Create one with `deliverer keys generate-encryption-key` and set {ENV} to it")
    try:
        return MultiFernet([Fernet(k.strip().encode()) for k in raw.split(",") if k.strip()])
    except ValueError:
        raise SealingError(f"{ENV} must be comma-separated Fernet keys (url-safe base64 of 32 bytes)") from None


def seal(secret: str, keys: str | None = None) -> str:
    return PREFIX + _box(keys).encrypt(secret.encode()).decode()


def unseal(stored: str, keys: str | None = None) -> str:
    if not stored.startswith(PREFIX):
        return stored
    return _unseal(stored, os.environ.get(ENV) if keys is None else keys)


# Every attempt needs its endpoint's secret and decrypting costs more than signing;
# endpoints are few, so their plain secrets stay in memory, as they would while sending.
@functools.lru_cache(maxsize=4096)
def _unseal(stored: str, keys: str | None) -> str:
    try:
        return _box(keys).decrypt(stored[len(PREFIX):].encode()).decode()
    except InvalidToken:
        raise SealingError(f"an endpoint secret was sealed with a key that is not in {ENV}") from None


def reseal(stored: str, keys: str | None = None) -> str:
    """The value sealed with the current first key (for key rotation and for unsealed legacy values)."""
    if not stored.startswith(PREFIX):
        return seal(stored, keys)
    return PREFIX + _box(keys).rotate(stored[len(PREFIX):].encode()).decode()


def use_development_key() -> None:
    """For the demo, the benchmark and the fault suite, which run every process themselves:
    a fresh key for this run unless one is set. Never for a deployment."""
    if not os.environ.get(ENV):
        os.environ[ENV] = new_key()
