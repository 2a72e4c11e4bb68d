"""Endpoint secrets at rest: sealed with keys from the environment, rotatable."""

import pytest

from deliverer.security import sealing


def test_seal_and_unseal_round_trip_without_revealing_the_secret() -> None:
    """A sealed secret differs from the secret every time, and unseals back to it."""
    key = sealing.new_key()
    first, second = sealing.seal("whsec_abc", key), sealing.seal("whsec_abc", key)
    assert first.startswith("fernet:") and "whsec_abc" not in first and first != second
    assert sealing.unseal(first, key) == "whsec_abc"


def test_keys_rotate_by_prepending() -> None:
    """With a new key first, old seals still open, and reseal moves them to the new key."""
    old, new = sealing.new_key(), sealing.new_key()
    sealed = sealing.seal("whsec_abc", old)
    assert sealing.unseal(sealed, f"{new},{old}") == "whsec_abc"
    moved = sealing.reseal(sealed, f"{new},{old}")
    assert sealing.unseal(moved, new) == "whsec_abc"
    with pytest.raises(sealing.SealingError, match="not in DELIVERER_SECRET_KEYS"):
        sealing.unseal(sealed, new)


def test_missing_or_bad_keys_say_how_to_fix_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a key, or with a malformed one, the error says what to set."""
    monkeypatch.delenv(sealing.ENV, raising=False)
    with pytest.raises(sealing.SealingError, match="generate-encryption-key"):
        sealing.seal("whsec_abc")
    with pytest.raises(sealing.SealingError, match="Fernet keys"):
        sealing.seal("whsec_abc", "not-a-key")


def test_legacy_plain_values_are_read_and_resealed() -> None:
    """A secret stored before sealing is read as it is and sealed by reseal."""
    key = sealing.new_key()
    assert sealing.unseal("whsec_legacy", key) == "whsec_legacy"
    assert sealing.unseal(sealing.reseal("whsec_legacy", key), key) == "whsec_legacy"
