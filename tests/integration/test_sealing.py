"""Sealed endpoint secrets meet the worker: one it cannot unseal fails the attempt, never the worker; key rotation."""

import asyncio

import psycopg
import pytest

import outbox
from deliverer.delivery.worker import Worker
from deliverer.registry import endpoints, request_options
from deliverer.security import sealing
from tests.support import settings_for, webhook_test


def test_a_secret_sealed_with_another_key_fails_the_attempt_not_the_worker(dsn: str, db: psycopg.Connection) -> None:
    """A secret the worker cannot unseal is a failed attempt, retried later; nothing is sent unsigned."""
    db.execute("INSERT INTO webhook_endpoint (id, org_id, url, secret) VALUES ('ep_1', 'org_a', "
               "'http://127.0.0.1:9/hook', %s)", [sealing.seal("whsec_x", sealing.new_key())])
    with psycopg.connect(dsn) as conn:
        outbox.publish(conn, "webhook.test", webhook_test(), org_id="org_a")
        conn.commit()

    async def attempt() -> list:
        async with Worker(settings_for(dsn)) as worker:
            return await worker.run_once()

    [result] = asyncio.run(attempt())
    assert not result.outcome.succeeded and "not in DELIVERER_SECRET_KEYS" in result.outcome.error_message
    assert result.retry_after == 5


def test_reseal_moves_header_values_and_auth_to_the_new_key(db: psycopg.Connection,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """After a key rotation and `reseal`, the custom headers and the credentials unseal with the new key alone."""
    old, new = sealing.new_key(), sealing.new_key()
    monkeypatch.setenv(sealing.ENV, old)
    endpoints.add(db, org_id="org_a", url="https://example.com/hook", options=endpoints.RequestOptions(
        headers={"X-Api-Key": "k-123"}, auth={"type": "bearer", "token": "t0k3n"}))
    monkeypatch.setenv(sealing.ENV, f"{new},{old}")
    assert endpoints.reseal_secrets(db) == 1
    monkeypatch.setenv(sealing.ENV, new)
    row = db.execute("SELECT headers, auth FROM webhook_endpoint").fetchone()
    assert row is not None
    assert request_options.unseal_headers(row[0]) == {"X-Api-Key": "k-123"}
    assert request_options.credentials(row[1]).authorization == "Bearer t0k3n"
