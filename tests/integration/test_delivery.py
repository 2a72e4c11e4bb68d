"""Delivering to a real receiver: body, signature, headers, fan-out and failures."""

import asyncio
import dataclasses
import json

import psycopg
import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook as StandardWebhook

import outbox
from deliverer.delivery.worker import Claimed, Result, Worker
from deliverer.registry import endpoints
from outbox import signatures
from outbox.ids import delivery_public_id
from tests.support import (
    SEED_EXAMPLES,
    FakeClock,
    Receiver,
    add_endpoint,
    aeventually,
    count,
    job_completed,
    job_failed,
    settings_for,
    webhook_test,
)


def publish(dsn: str, event_type: str, data: dict, org_id: str = "org_a") -> str:
    with psycopg.connect(dsn) as conn:
        event_id = outbox.publish(conn, event_type, data, org_id=org_id)
        conn.commit()
    return event_id


def states(db: psycopg.Connection) -> dict[str, str]:
    return {endpoint: state for endpoint, state in db.execute("SELECT endpoint_id, state FROM delivery_state")}


class TestWhatReceiversGet:
    async def test_seed_receiver_verifies_every_event_type(self, dsn: str, db: psycopg.Connection,
                                                           receiver: Receiver) -> None:
        """The customer docs' signature check passes for every event type, over the exact body."""
        add_endpoint(db, receiver, "/webhooks/docextract")
        published = {t: publish(dsn, t, make()) for t, make in SEED_EXAMPLES.items()}
        published["webhook.test"] = publish(dsn, "webhook.test", webhook_test())
        async with Worker(settings_for(dsn)) as worker:
            await worker.run_once()
        assert len(receiver.requests) == 5
        for request in receiver.requests:
            assert request.signature_ok is True
            event = json.loads(request.body)
            assert set(event) == {"event", "data"}
            assert published[event["event"]] == request.headers["X-DocExtract-Event-Id"]
            assert request.headers["X-DocExtract-Event-Type"] == event["event"]
            assert request.headers["Content-Type"] == "application/json"
            assert request.headers["User-Agent"].startswith("DocExtract-Webhooks/")
            assert request.headers["X-DocExtract-Delivery-Id"].startswith("dlv_")
            assert request.headers["X-DocExtract-Delivery-Attempt"] == "1"
            assert request.headers["X-DocExtract-Timestamp"].isdigit()
        by_type = {json.loads(r.body)["event"]: json.loads(r.body)["data"] for r in receiver.requests}
        assert by_type["job.completed"] == SEED_EXAMPLES["job.completed"]()

    async def test_standardwebhooks_library_verifies_our_requests(self, dsn: str, db: psycopg.Connection,
                                                                  receiver: Receiver) -> None:
        """A receiver built on the standardwebhooks package verifies every request unchanged."""
        endpoint = add_endpoint(db, receiver, "/hook")
        published = [publish(dsn, t, make()) for t, make in SEED_EXAMPLES.items()]
        async with Worker(settings_for(dsn)) as worker:
            await worker.run_once()
        verifier = StandardWebhook(endpoint.secret)
        for request in receiver.requests:
            assert verifier.verify(request.body, request.headers)["event"] in SEED_EXAMPLES
            signatures.verify_standard(request.body, request.headers, endpoint.secret)
            assert request.headers["webhook-id"] == request.headers["X-DocExtract-Event-Id"]
        assert sorted(r.headers["webhook-id"] for r in receiver.requests) == sorted(published)

    async def test_wrong_secret_fails_the_seed_check(self, dsn: str, db: psycopg.Connection,
                                                     receiver: Receiver) -> None:
        """The signature really depends on the secret: a receiver with another secret rejects it."""
        add_endpoint(db, receiver, "/hook")
        receiver.secrets["/hook"] = endpoints.new_secret()
        publish(dsn, "webhook.test", webhook_test())
        async with Worker(settings_for(dsn)) as worker:
            await worker.run_once()
        assert [r.signature_ok for r in receiver.requests] == [False]

    async def test_same_event_id_on_every_attempt(self, dsn: str, db: psycopg.Connection, receiver: Receiver,
                                                  clock: FakeClock) -> None:
        """Retries carry the same event id and body, so receivers can deduplicate."""
        add_endpoint(db, receiver, "/flaky")
        receiver.fail_first("/flaky", 2)
        event_id = publish(dsn, "job.completed", job_completed())
        async with Worker(settings_for(dsn), clock=clock) as worker:
            for _ in range(3):
                await worker.run_once()
                clock.advance(3600)
        assert receiver.event_ids() == [event_id] * 3
        assert len({r.body for r in receiver.requests}) == 1
        assert [r.headers["X-DocExtract-Delivery-Attempt"] for r in receiver.requests] == ["1", "2", "3"]


class TestFanOut:
    async def test_fan_out_follows_subscriptions_orgs_and_enabled(self, dsn: str, db: psycopg.Connection,
                                                                  receiver: Receiver) -> None:
        """An event goes to each enabled endpoint of its org subscribed to its type, and nowhere else."""
        everything = add_endpoint(db, receiver, "/all")
        add_endpoint(db, receiver, "/failed-only", events=["job.failed"])
        add_endpoint(db, receiver, "/other-org", org_id="org_b")
        disabled = add_endpoint(db, receiver, "/disabled")
        endpoints.set_enabled(db, disabled.id, False)
        completed = publish(dsn, "job.completed", job_completed())
        failed = publish(dsn, "job.failed", job_failed())
        async with Worker(settings_for(dsn)) as worker:
            await worker.run_once()
        assert sorted(receiver.event_ids("/all")) == sorted([completed, failed])
        assert receiver.event_ids("/failed-only") == [failed]
        assert receiver.to("/other-org") == []
        assert receiver.to("/disabled") == []
        assert everything.event_types is None

    async def test_endpoint_disabled_after_publish_gets_nothing(self, dsn: str, db: psycopg.Connection,
                                                               receiver: Receiver) -> None:
        """A delivery whose endpoint was disabled before sending is closed without a request."""
        endpoint = add_endpoint(db, receiver, "/hook")
        publish(dsn, "webhook.test", webhook_test())
        endpoints.set_enabled(db, endpoint.id, False)
        async with Worker(settings_for(dsn)) as worker:
            results = await worker.run_once()
        assert receiver.requests == []
        assert [r.outcome.error_class for r in results] == ["endpoint_disabled"]
        assert states(db) == {endpoint.id: "failed"}


class TestFailures:
    async def test_redirects_are_not_followed(self, dsn: str, db: psycopg.Connection, receiver: Receiver) -> None:
        """A 301 is a failed attempt; the Location is never requested."""
        add_endpoint(db, receiver, "/moved")

        async def moved(request: web.Request, n: int) -> web.StreamResponse:
            return web.Response(status=301, headers={"Location": receiver.url("/elsewhere")})
        receiver.behave("/moved", moved)
        publish(dsn, "webhook.test", webhook_test())
        async with Worker(settings_for(dsn)) as worker:
            results = await worker.run_once()
        assert [r.path for r in receiver.requests] == ["/moved"]
        assert results[0].outcome.http_status == 301
        assert results[0].outcome.error_class == "http_3xx"
        assert results[0].retry_after == 5

    async def test_slow_receiver_times_out(self, dsn: str, db: psycopg.Connection, receiver: Receiver) -> None:
        """A receiver slower than the timeout is a failed attempt of class timeout."""
        add_endpoint(db, receiver, "/slow")

        async def slow(request: web.Request, n: int) -> web.StreamResponse:
            await asyncio.sleep(5)  # the behaviour under test: answering long after the 0.3 s timeout
            return web.Response()
        receiver.behave("/slow", slow)
        publish(dsn, "webhook.test", webhook_test())
        async with Worker(settings_for(dsn, http_timeout=0.3, lease_seconds=10)) as worker:
            results = await worker.run_once()
        assert results[0].outcome.error_class == "timeout"
        assert 250 <= results[0].outcome.duration_ms < 3000
        row = db.execute("SELECT outcome, error_class, http_status FROM delivery_log "
                         "WHERE kind = 'attempt_finished'").fetchone()
        assert row == ("failed", "timeout", None)

    async def test_connection_refused_is_recorded(self, dsn: str, db: psycopg.Connection) -> None:
        """Nobody listening is a connect_error, recorded in the log with a message."""
        with socket_closed_port() as port:
            endpoints.add(db, org_id="org_a", url=f"http://127.0.0.1:{port}/hook", allow_insecure=True)
            publish(dsn, "webhook.test", webhook_test())
            async with Worker(settings_for(dsn)) as worker:
                results = await worker.run_once()
        assert results[0].outcome.error_class == "connect_error"
        row = db.execute("SELECT error_class, error_message FROM delivery_log WHERE kind = 'attempt_finished'")
        error_class, message = row.fetchone()
        assert error_class == "connect_error" and "could not connect" in message

    async def test_response_excerpt_is_capped(self, dsn: str, db: psycopg.Connection, receiver: Receiver) -> None:
        """Only the first KiB of a response body is read and kept."""
        add_endpoint(db, receiver, "/chatty")

        async def chatty(request: web.Request, n: int) -> web.StreamResponse:
            return web.Response(status=500, text="e" * 100_000)
        receiver.behave("/chatty", chatty)
        publish(dsn, "webhook.test", webhook_test())
        async with Worker(settings_for(dsn)) as worker:
            await worker.run_once()
        row = db.execute("SELECT length(response_excerpt) FROM delivery_log WHERE kind = 'attempt_finished'")
        assert row.fetchone() == (1024,)


    async def test_a_response_body_postgresql_cannot_store_is_recorded(
            self, dsn: str, db: psycopg.Connection, receiver: Receiver) -> None:
        """A receiver's NUL bytes (which text columns and JSON refuse) must not stop outcomes being written."""
        add_endpoint(db, receiver, "/binary")

        async def binary(request: web.Request, n: int) -> web.StreamResponse:
            return web.Response(status=200, body=b"ok\x00\xff\xfe binary")
        receiver.behave("/binary", binary)
        publish(dsn, "webhook.test", webhook_test())
        async with Worker(settings_for(dsn)) as worker:
            [result] = await worker.run_once()
        assert result.outcome.succeeded
        row = db.execute("SELECT response_excerpt FROM delivery_log WHERE kind = 'attempt_finished'").fetchone()
        assert row == ("ok\ufffd\ufffd\ufffd binary",)
        assert count(db, "delivery_queue") == 0


    async def test_an_outcome_postgresql_refuses_does_not_hold_back_the_others(
            self, dsn: str, db: psycopg.Connection, receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
        """One outcome with a value PostgreSQL refuses (here a status beyond its integer range, which no
        receiver can send today: a stand-in for whatever is not foreseen) is stored without it, and the
        rest of its batch is recorded: retrying the batch as it was would block every outcome forever."""
        add_endpoint(db, receiver, "/hook")
        published = [publish(dsn, "webhook.test", webhook_test()) for _ in range(5)]
        async with Worker(settings_for(dsn)) as worker:
            attempt = worker.attempt
            poisoned: list[str] = []

            async def poison_one(claimed: Claimed) -> Result:
                result = await attempt(claimed)
                if not poisoned:
                    poisoned.append(delivery_public_id(claimed.delivery_id))
                    return dataclasses.replace(result, outcome=dataclasses.replace(result.outcome,
                                                                                   http_status=2**40))
                return result
            monkeypatch.setattr(worker, "attempt", poison_one)
            stop = asyncio.Event()
            run = asyncio.create_task(worker.run(stop))
            try:
                await aeventually(lambda: count(db, "delivery_queue") == 0,
                                  "an empty queue (a refused outcome must not hold back its batch)")
            finally:
                stop.set()
                await run
        assert count(db, "delivery_queue") == 0, "the refused outcome held back its batch"
        rows = db.execute("SELECT delivery_id, http_status, error_message FROM delivery_log "
                          "WHERE kind = 'attempt_finished' ORDER BY seq").fetchall()
        assert len(rows) == len(published)
        [stored] = [r for r in rows if delivery_public_id(r[0]) == poisoned[0]]
        assert stored[1] is None and "could not be stored" in stored[2]


class socket_closed_port:
    """A loopback port with nothing listening on it."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]  # bound but not listening: connections are refused

    def __exit__(self, *exc: object) -> None:
        self.sock.close()
