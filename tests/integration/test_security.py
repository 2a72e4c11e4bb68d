"""Security and endpoint health end to end: rotation overlap, 410, auto-disable, fair sharing.

The per-endpoint room on its own is in tests/unit/test_endpoint_limits.py; secrets at rest and fair sharing
in real worker processes in tests/system/test_security.py.
"""

import asyncio
import json

import psycopg
import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook as StandardWebhook

import outbox
from deliverer.delivery.worker import Worker
from deliverer.registry import endpoints
from outbox import signatures
from tests.support import (
    FakeClock,
    Receiver,
    add_endpoint,
    aeventually,
    hanging_and_healthy,
    settings_for,
    webhook_test,
    worker_asleep,
)


def publish(dsn: str, org_id: str = "org_a") -> str:
    with psycopg.connect(dsn) as conn:
        event_id = outbox.publish(conn, "webhook.test", webhook_test(), org_id=org_id)
        conn.commit()
    return event_id


async def rotate(dsn: str, endpoint_id: str, **kwargs: float) -> str:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        rotated = await endpoints.rotate_secret(conn, endpoint_id, "org_a", **kwargs)
    assert rotated is not None and rotated.secret is not None
    return rotated.secret


class TestSecretRotation:
    async def test_both_secrets_verify_during_the_grace_period_and_only_the_new_one_after(
            self, dsn: str, db: psycopg.Connection, receiver: Receiver) -> None:
        """After rotation, standardwebhooks receivers with the old or the new secret both verify; after the grace,
        only the new one does. X-DocExtract-Signature uses the new secret at once."""
        endpoint = add_endpoint(db, receiver, "/hook")
        old = endpoint.secret
        new = await rotate(dsn, endpoint.id)
        publish(dsn)
        async with Worker(settings_for(dsn)) as worker:
            await worker.run_once()
        during = receiver.requests[-1]
        StandardWebhook(old).verify(during.body, during.headers)
        StandardWebhook(new).verify(during.body, during.headers)
        assert len(during.headers["webhook-signature"].split()) == 2
        assert signatures.verify_signature(during.body, during.headers["X-DocExtract-Signature"], new)

        newer = await rotate(dsn, endpoint.id, grace_seconds=0)  # ends the first grace period
        publish(dsn)
        async with Worker(settings_for(dsn)) as worker:
            await worker.run_once()
        after = receiver.requests[-1]
        StandardWebhook(newer).verify(after.body, after.headers)
        assert len(after.headers["webhook-signature"].split()) == 1
        with pytest.raises(signatures.InvalidSignature):
            signatures.verify_standard(after.body, after.headers, [old, new])


class TestEndpointHealth:
    async def test_410_gone_ends_the_delivery_and_disables_the_endpoint(
            self, dsn: str, db: psycopg.Connection, receiver: Receiver) -> None:
        """A 410 is not retried; the endpoint is disabled with the reason, gets nothing more, and the org's
        other endpoint hears of it."""
        endpoint = add_endpoint(db, receiver, "/gone", events=["webhook.test"])
        add_endpoint(db, receiver, "/ops", events=["webhook.endpoint_disabled"])

        async def gone(request: web.Request, n: int) -> web.StreamResponse:
            return web.Response(status=410)
        receiver.behave("/gone", gone)
        publish(dsn)
        async with Worker(settings_for(dsn)) as worker:
            [result] = await worker.run_once()
            assert result.retry_after is None
            publish(dsn)
            await worker.run_once()
            await worker.run_once()  # delivers the announcement
        assert len(receiver.to("/gone")) == 1
        assert db.execute("SELECT enabled, disabled_reason FROM webhook_endpoint WHERE id = %s",
                          [endpoint.id]).fetchone() == (False, "the receiver answered 410 Gone")
        [notice] = receiver.to("/ops")
        assert notice.signature_ok
        event = json.loads(notice.body)
        assert event["event"] == "webhook.endpoint_disabled"
        assert (event["data"]["endpoint_id"], event["data"]["url"], event["data"]["reason"]) == (
            endpoint.id, endpoint.url, "the receiver answered 410 Gone")
        assert sorted(db.execute("SELECT state FROM delivery_state").fetchall()) == [("delivered",), ("failed",)]
        # Two test events and the announcement; the second test event had no delivery: the endpoint was disabled.
        # (And the operator's endpoint.disabled and delivery.exhausted, in the operator's org.)
        assert db.execute("SELECT count(*) FROM outbox_event WHERE org_id = 'org_a'").fetchone() == (3,)

    async def test_an_endpoint_failing_for_the_whole_period_is_disabled(
            self, dsn: str, db: psycopg.Connection, receiver: Receiver, clock: FakeClock) -> None:
        """Failures spread over the disable period disable the endpoint; one success in between resets the clock."""
        endpoint = add_endpoint(db, receiver, "/down")
        receiver.fail_first("/down", 3)  # fails, fails, fails, then recovers
        settings = settings_for(dsn, retry_delays=(), disable_after=3600)
        async with Worker(settings, clock=clock) as worker:
            publish(dsn)
            await worker.run_once()            # failing since now
            clock.advance(1800)
            publish(dsn)
            await worker.run_once()            # still within the period
            assert db.execute("SELECT enabled FROM webhook_endpoint").fetchone() == (True,)
            clock.advance(1801)
            publish(dsn)
            await worker.run_once()            # failing for over an hour: disabled
        row = db.execute("SELECT enabled, disabled_reason FROM webhook_endpoint WHERE id = %s",
                         [endpoint.id]).fetchone()
        assert row[0] is False and row[1].startswith("every attempt failed since ")

        other = add_endpoint(db, receiver, "/flaky", org_id="org_b")
        receiver.fail_first("/flaky", 1)
        async with Worker(settings, clock=clock) as worker:
            publish(dsn, "org_b")
            await worker.run_once()            # fails
            clock.advance(3000)
            publish(dsn, "org_b")
            await worker.run_once()            # succeeds: the run of failures ends
            clock.advance(3000)
        assert db.execute("SELECT enabled, failing_since FROM webhook_endpoint WHERE id = %s",
                          [other.id]).fetchone() == (True, None)

    async def test_enabling_again_clears_the_reason(self, dsn: str, db: psycopg.Connection,
                                                    receiver: Receiver) -> None:
        """Re-enabling a disabled endpoint clears why it was disabled."""
        endpoint = add_endpoint(db, receiver, "/hook")
        db.execute("UPDATE webhook_endpoint SET enabled = false, disabled_reason = 'the receiver answered 410 Gone'")
        enabled = endpoints.set_enabled(db, endpoint.id, True)
        assert (enabled.enabled, enabled.disabled_reason) == (True, None)




class TestFairSharing:
    async def test_a_dead_endpoints_backlog_does_not_hide_newer_work(
            self, dsn: str, db: psycopg.Connection, receiver: Receiver) -> None:
        """A claim window filled by a capped endpoint's older deliveries is looked past at once, not
        after the poll interval: healthy endpoints behind a dead one's backlog are not kept waiting."""
        release = hanging_and_healthy(db, receiver)
        settings = settings_for(dsn, poll_interval=60.0, batch_size=10, max_in_flight=20, http_timeout=30.0,
                                lease_seconds=60.0)
        stop = asyncio.Event()
        async with Worker(settings) as worker:
            run = asyncio.create_task(worker.run(stop))
            try:
                # Idle and listening: the next wake-up is the commit below.
                await aeventually(lambda: worker_asleep(db, worker.worker_id), "the worker to go to sleep")
                with psycopg.connect(dsn) as conn:  # older than the healthy deliveries, more than a claim window
                    outbox.publish_many(conn, [outbox.Event("webhook.test", webhook_test(), "org_slow")] * 60)
                    healthy = outbox.publish_many(conn, [outbox.Event("webhook.test", webhook_test(), "org_ok")] * 5)
                    conn.commit()
                await receiver.wait_until(lambda: len(receiver.to("/ok")) == len(healthy),
                                          "the healthy deliveries, long before the 60 s poll", timeout=15)
                assert sorted(receiver.event_ids("/ok")) == sorted(healthy), "healthy work waited for the poll"
                assert len(receiver.to("/hang")) == 4
            finally:
                release.set()
                stop.set()
                await run
