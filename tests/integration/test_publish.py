"""The producer library: transactional publish on every supported connection type."""

import contextlib
import json
import re
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

import outbox
from deliverer.delivery.worker import CHANNEL, Worker
from deliverer.registry import endpoints
from tests.support import (
    SEED_EXAMPLES,
    Receiver,
    add_endpoint,
    count,
    depleted,
    eventually,
    job_completed,
    job_failed,
    settings_for,
    webhook_test,
)

# Each opener yields (connection-like object, commit, rollback).
Opened = tuple[Any, Callable[[], Any], Callable[[], Any]]


@contextlib.contextmanager
def _psycopg(dsn: str) -> Iterator[Opened]:
    with psycopg.connect(dsn) as conn:
        yield conn, conn.commit, conn.rollback


@contextlib.contextmanager
def _sa_connection(dsn: str) -> Iterator[Opened]:
    engine = sqlalchemy.create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(dsn))
    try:
        with engine.connect() as conn:
            yield conn, conn.commit, conn.rollback
    finally:
        engine.dispose()


@contextlib.contextmanager
def _sa_session(dsn: str) -> Iterator[Opened]:
    engine = sqlalchemy.create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(dsn))
    try:
        with Session(engine) as session:
            yield session, session.commit, session.rollback
    finally:
        engine.dispose()


@contextlib.asynccontextmanager
async def _apsycopg(dsn: str) -> AsyncIterator[Opened]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        yield conn, conn.commit, conn.rollback


@contextlib.asynccontextmanager
async def _sa_async_connection(dsn: str) -> AsyncIterator[Opened]:
    engine = create_async_engine("postgresql+psycopg://", async_creator=lambda: psycopg.AsyncConnection.connect(dsn))
    try:
        async with engine.connect() as conn:
            yield conn, conn.commit, conn.rollback
    finally:
        await engine.dispose()


@contextlib.asynccontextmanager
async def _sa_async_session(dsn: str) -> AsyncIterator[Opened]:
    engine = create_async_engine("postgresql+psycopg://", async_creator=lambda: psycopg.AsyncConnection.connect(dsn))
    try:
        async with AsyncSession(engine) as session:
            yield session, session.commit, session.rollback
    finally:
        await engine.dispose()


SYNC = {"psycopg": _psycopg, "sqlalchemy-connection": _sa_connection, "sqlalchemy-session": _sa_session}
ASYNC = {"psycopg-async": _apsycopg, "sqlalchemy-async-connection": _sa_async_connection,
         "sqlalchemy-async-session": _sa_async_session}


async def _deliver_all(dsn: str) -> None:
    async with Worker(settings_for(dsn)) as worker:
        await worker.run_once()


class TestTransactionality:
    @pytest.mark.parametrize("kind", SYNC)
    async def test_commit_delivers_and_rollback_never_existed(self, kind: str, dsn: str, db: psycopg.Connection,
                                                              receiver: Receiver) -> None:
        """A committed event is delivered; a rolled-back one leaves no trace anywhere."""
        add_endpoint(db, receiver, "/hook")
        with SYNC[kind](dsn) as (conn, commit, rollback):
            kept = outbox.publish(conn, "job.completed", job_completed(job_id="job_kept"), org_id="org_a")
            assert count(db, "outbox_event") == 0, "visible before commit"
            commit()
            dropped = outbox.publish(conn, "job.completed", job_completed(job_id="job_dropped"), org_id="org_a")
            rollback()
        await _deliver_all(dsn)
        assert receiver.event_ids() == [kept]
        assert dropped != kept
        assert count(db, "outbox_event") == 1
        assert count(db, "delivery_queue") == 0
        rows = db.execute("SELECT count(DISTINCT delivery_id) FROM delivery_log").fetchone()
        assert rows == (1,)

    @pytest.mark.parametrize("kind", ASYNC)
    async def test_async_commit_delivers_and_rollback_never_existed(self, kind: str, dsn: str,
                                                                    db: psycopg.Connection,
                                                                    receiver: Receiver) -> None:
        """apublish keeps the same promise on async connections and sessions."""
        add_endpoint(db, receiver, "/hook")
        async with ASYNC[kind](dsn) as (conn, commit, rollback):
            kept = await outbox.apublish(conn, "job.completed", job_completed(job_id="job_kept"), org_id="org_a")
            assert count(db, "outbox_event") == 0, "visible before commit"
            await commit()
            await outbox.apublish(conn, "job.completed", job_completed(job_id="job_dropped"), org_id="org_a")
            await rollback()
        await _deliver_all(dsn)
        assert receiver.event_ids() == [kept]
        assert count(db, "outbox_event") == 1

    def test_publish_does_not_commit_or_open_connections(self, dsn: str, db: psycopg.Connection) -> None:
        """publish runs on the caller's connection and leaves the transaction open."""
        with psycopg.connect(dsn) as conn:
            before = db.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()").fetchone()
            outbox.publish(conn, "webhook.test", webhook_test(), org_id="org_a")
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
            after = db.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()").fetchone()
            assert before == after
            conn.rollback()
        assert count(db, "outbox_event") == 0


class TestValidation:
    @pytest.mark.parametrize(("event_type", "data", "org_id", "error", "message"), [
        ("job.exploded", {}, "org_a", outbox.UnknownEventType, "unknown event type 'job.exploded'"),
        ("job.completed", {**job_completed(), "extracted_data": {"when": object()}}, "org_a",
         outbox.InvalidPayload, "not JSON-serialisable"),
        ("job.completed", {**job_completed(), "confidence": {"x": float("nan")}}, "org_a",
         outbox.InvalidPayload, "not JSON-serialisable"),
        ("job.completed", job_completed(), "", outbox.MissingOrgId, "org_id must be a non-empty string"),
        ("job.completed", job_completed(), None, outbox.MissingOrgId, "org_id must be a non-empty string"),
        ("job.completed", {k: v for k, v in job_completed().items() if k != "extractor_id"}, "org_a",
         outbox.InvalidPayload, "extractor_id is required"),
        ("job.completed", {**job_completed(), "processing_time_ms": "4532"}, "org_a",
         outbox.InvalidPayload, "processing_time_ms must be an integer"),
        ("job.completed", {**job_completed(), "processing_time_ms": True}, "org_a",
         outbox.InvalidPayload, "processing_time_ms must be an integer"),
        ("job.completed", {**job_completed(), "status": "failed"}, "org_a",
         outbox.InvalidPayload, "status must be the string 'completed'"),
        ("job.completed", {**job_completed(), "completed_at": "yesterday"}, "org_a",
         outbox.InvalidPayload, "completed_at must be an ISO-8601 timestamp"),
        ("job.completed", {**job_completed(), "completed_at": "2024-11-23T10:00:05"}, "org_a",
         outbox.InvalidPayload, "with a UTC offset"),
        ("job.completed", job_completed(org_id="org_b"), "org_a",
         outbox.InvalidPayload, "data.org_id is 'org_b' but the event is published for org 'org_a'"),
        ("job.failed", {**SEED_EXAMPLES["job.failed"](), "error_details": {"code": "x"}}, "org_a",
         outbox.InvalidPayload, "error_details.message is required"),
        ("credits.low_balance", {**SEED_EXAMPLES["credits.low_balance"](), "current_balance": None}, "org_a",
         outbox.InvalidPayload, "current_balance is required"),
        ("credits.depleted", {**depleted(), "jobs_queued": 2.5}, "org_a",
         outbox.InvalidPayload, "jobs_queued must be an integer"),
        ("webhook.test", ["not", "an", "object"], "org_a", outbox.InvalidPayload, "data must be a JSON object"),
        ("job.completed", {**job_completed(), "extracted_data": {"text": "x" * 300_000}}, "org_a",
         outbox.PayloadTooLarge, "over the 262144-byte limit"),
        ("job.completed", {**job_completed(), "extracted_data": {"text": "\ud800"}}, "org_a",
         outbox.InvalidPayload, "not valid Unicode"),
    ])
    def test_bad_input_raises_before_writing_and_keeps_the_transaction(
            self, dsn: str, db: psycopg.Connection, event_type: str, data: Any, org_id: Any,
            error: type[Exception], message: str) -> None:
        """Each kind of bad input raises a clear OutboxError; nothing is written and the transaction lives on."""
        with psycopg.connect(dsn) as conn:
            with pytest.raises(error, match=re.escape(message)):
                outbox.publish(conn, event_type, data, org_id=org_id)
            # The caller's transaction is still usable: a good publish succeeds and commits.
            outbox.publish(conn, "webhook.test", webhook_test(), org_id="org_a")
            conn.commit()
        assert count(db, "outbox_event") == 1

    def test_a_bad_event_in_a_batch_writes_none(self, dsn: str, db: psycopg.Connection) -> None:
        """publish_many validates every event before writing any."""
        with psycopg.connect(dsn) as conn:
            with pytest.raises(outbox.UnknownEventType):
                outbox.publish_many(conn, [
                    outbox.Event("webhook.test", webhook_test(), "org_a"),
                    outbox.Event("nope", {}, "org_a"),
                ])
            conn.commit()
        assert count(db, "outbox_event") == 0

    @pytest.mark.parametrize("event_type", list(SEED_EXAMPLES))
    def test_seed_examples_are_accepted_and_stored_verbatim(self, dsn: str, db: psycopg.Connection,
                                                            event_type: str) -> None:
        """Every example payload of the customer docs publishes, and the body is {"event", "data"}."""
        data = SEED_EXAMPLES[event_type]()
        with psycopg.connect(dsn) as conn:
            event_id = outbox.publish(conn, event_type, data, org_id="org_a")
            conn.commit()
        row = db.execute("SELECT body FROM outbox_event WHERE id = %s", [outbox.parse_event_id(event_id)]).fetchone()
        assert row is not None
        assert json.loads(row[0]) == {"event": event_type, "data": data}


class TestDedupeAndBatch:
    def test_dedupe_key_returns_the_first_id(self, dsn: str, db: psycopg.Connection) -> None:
        """A second publish with the same dedupe_key in the same org writes nothing and returns the first id."""
        with psycopg.connect(dsn) as conn:
            first = outbox.publish(conn, "job.completed", job_completed(), org_id="org_a", dedupe_key="job_abc123")
            conn.commit()
            again = outbox.publish(conn, "job.completed", job_completed(), org_id="org_a", dedupe_key="job_abc123")
            other_org = outbox.publish(conn, "job.completed", job_completed(org_id="org_b"), org_id="org_b",
                                       dedupe_key="job_abc123")
            conn.commit()
        assert again == first
        assert other_org != first
        assert count(db, "outbox_event") == 2

    def test_dedupe_key_of_a_rolled_back_publish_is_free_again(self, dsn: str, db: psycopg.Connection) -> None:
        """Rolling back releases the key, since the event never existed."""
        with psycopg.connect(dsn) as conn:
            dropped = outbox.publish(conn, "webhook.test", webhook_test(), org_id="org_a", dedupe_key="k")
            conn.rollback()
            kept = outbox.publish(conn, "webhook.test", webhook_test(), org_id="org_a", dedupe_key="k")
            conn.commit()
        assert kept != dropped
        assert count(db, "outbox_event") == 1

    def test_batch_publishes_in_order_with_dedupe_inside_the_batch(self, dsn: str, db: psycopg.Connection) -> None:
        """publish_many returns ids in input order; a repeated key inside the batch maps to the first."""
        with psycopg.connect(dsn) as conn:
            ids = outbox.publish_many(conn, [
                outbox.Event("job.completed", job_completed(job_id=f"job_{i}"), "org_a", dedupe_key=f"k{i % 3}")
                for i in range(6)
            ])
            conn.commit()
        assert ids[3:] == ids[:3]
        assert len(set(ids)) == 3
        assert count(db, "outbox_event") == 3

    def test_event_ids_are_public_and_time_ordered(self, dsn: str) -> None:
        """Ids look like evt_<32 hex> and sort in publish order."""
        with psycopg.connect(dsn) as conn:
            ids = [outbox.publish(conn, "webhook.test", webhook_test(), org_id="org_a") for _ in range(5)]
            conn.rollback()
        assert all(i.startswith("evt_") and len(i) == 36 for i in ids)
        assert ids == sorted(ids)


def _batch_with_duplicates(org_id: str = "org_a") -> list[outbox.Event]:
    """Six events: keys k0 k1 k2 k0 k1 and one without a key."""
    events = [outbox.Event("job.completed", job_completed(org_id, f"job_{i}"), org_id, dedupe_key=f"k{i % 3}")
              for i in range(5)]
    return [*events, outbox.Event("webhook.test", webhook_test(), org_id)]


def _check_batch_ids(batch_ids: list[str], taken: str) -> None:
    """k0 was taken before the batch; k1, k2 and the keyless event are new; repeats map to the first."""
    assert batch_ids[0] == batch_ids[3] == taken
    assert batch_ids[1] == batch_ids[4] != batch_ids[2]
    assert len({*batch_ids[1:3], batch_ids[5], taken}) == 4


class TestEveryConnectionKind:
    @pytest.mark.parametrize("kind", SYNC)
    def test_publish_and_publish_many_deduplicate(self, kind: str, dsn: str, db: psycopg.Connection) -> None:
        """Single and batch statements, with and without keys, give the same ids on every sync connection kind."""
        with SYNC[kind](dsn) as (conn, commit, _):
            taken = outbox.publish(conn, "job.completed", job_completed(), org_id="org_a", dedupe_key="k0")
            assert outbox.publish(conn, "job.completed", job_completed(), org_id="org_a", dedupe_key="k0") == taken
            batch_ids = outbox.publish_many(conn, _batch_with_duplicates())
            plain = outbox.publish_many(conn, [outbox.Event("webhook.test", webhook_test(), "org_a")] * 2)
            commit()
        _check_batch_ids(batch_ids, taken)
        assert len(set(plain)) == 2
        assert count(db, "outbox_event") == 6
        assert count(db, "outbox_dedupe") == 3

    @pytest.mark.parametrize("kind", ASYNC)
    async def test_apublish_and_apublish_many_deduplicate(self, kind: str, dsn: str, db: psycopg.Connection) -> None:
        """The same on every async connection kind."""
        async with ASYNC[kind](dsn) as (conn, commit, _):
            taken = await outbox.apublish(conn, "job.completed", job_completed(), org_id="org_a", dedupe_key="k0")
            again = await outbox.apublish(conn, "job.completed", job_completed(), org_id="org_a", dedupe_key="k0")
            batch_ids = await outbox.apublish_many(conn, _batch_with_duplicates())
            await commit()
        assert again == taken
        _check_batch_ids(batch_ids, taken)
        assert count(db, "outbox_event") == 4

    @pytest.mark.parametrize("prepare_threshold", [None, 5])
    def test_statements_are_prepared_once_unless_the_connection_forbids_it(
            self, dsn: str, prepare_threshold: int | None) -> None:
        """Publish prepares its statements on first use, and still works with prepared statements off (PgBouncer)."""
        with psycopg.connect(dsn, prepare_threshold=prepare_threshold) as conn:
            for _ in range(2):
                outbox.publish(conn, "webhook.test", webhook_test(), org_id="org_a")
                outbox.publish(conn, "webhook.test", webhook_test(), org_id="org_a", dedupe_key="k")
                outbox.publish_many(conn, [outbox.Event("webhook.test", webhook_test(), "org_a")] * 3)
            prepared = conn.execute(
                "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s", ["%INSERT INTO outbox_event%"]
            ).fetchone()
            conn.rollback()
        assert prepared == (0 if prepare_threshold is None else 3,)


class TestFanOut:
    def test_each_event_reaches_exactly_the_subscribed_endpoints_and_wakes_once(
            self, dsn: str, db: psycopg.Connection) -> None:
        """Queue and log rows are written per enabled, undeleted endpoint of the org that takes the type; one NOTIFY."""
        def add(org_id: str, events: list[str] | None = None) -> str:
            return endpoints.add(db, org_id=org_id, url="https://example.com/hook", event_types=events).id

        every, tests_only, failed_only = add("org_a"), add("org_a", ["webhook.test"]), add("org_a", ["job.failed"])
        disabled, deleted, other_org = add("org_a"), add("org_a"), add("org_b")
        endpoints.set_enabled(db, disabled, False)
        db.execute("UPDATE webhook_endpoint SET deleted_at = now() WHERE id = %s", [deleted])
        woken: list[str] = []
        with psycopg.connect(dsn, autocommit=True) as listener, psycopg.connect(dsn) as conn:
            listener.add_notify_handler(lambda n: woken.append(n.channel))
            listener.execute(f"LISTEN {CHANNEL}")
            published = {
                outbox.publish(conn, "webhook.test", webhook_test(), org_id="org_a"): {every, tests_only},
                outbox.publish(conn, "job.completed", job_completed(), org_id="org_a", dedupe_key="j"): {every},
                **dict(zip(outbox.publish_many(conn, [
                    outbox.Event("webhook.test", webhook_test(), "org_b"),
                    outbox.Event("job.completed", job_completed("org_a", "job_2"), "org_a"),
                ]), [{other_org}, {every}], strict=True)),
            }
            conn.commit()
            listener.execute("SELECT 1")  # notifications of committed transactions arrive before this answer
            assert woken == [CHANNEL]
            outbox.publish(conn, "job.completed", job_completed("org_c"), org_id="org_c")  # nobody subscribed
            conn.commit()
            listener.execute("SELECT 1")
            assert woken == [CHANNEL], "no delivery, no wake-up"
            keyed = outbox.publish(conn, "job.failed", job_failed(), org_id="org_a", dedupe_key="f")
            published[keyed] = {every, failed_only}
            conn.commit()
            listener.execute("SELECT 1")
            assert woken == [CHANNEL] * 2
            assert outbox.publish(conn, "job.failed", job_failed(), org_id="org_a", dedupe_key="f") == keyed
            conn.commit()
            listener.execute("SELECT 1")
            assert woken == [CHANNEL] * 2, "a deduplicated publish writes nothing and wakes nobody"
        expected = {(outbox.parse_event_id(e), ep) for e, eps in published.items() for ep in eps}
        queued = db.execute("SELECT event_id, endpoint_id, delivery_id, due_at, series, attempt FROM delivery_queue"
                            ).fetchall()
        logged = db.execute("SELECT event_id, endpoint_id, delivery_id, next_attempt_at, series, attempt "
                            "FROM delivery_log WHERE kind = 'scheduled'").fetchall()
        assert {(e, ep) for e, ep, *_ in queued} == expected
        assert len(queued) == len(expected)
        assert sorted(queued) == sorted(logged)
        created = dict(db.execute("SELECT id, created_at FROM outbox_event").fetchall())
        assert all(due == created[e] and (series, attempt) == (1, 0) for e, _, _, due, series, attempt in queued)


class TestDedupeRaces:
    @pytest.mark.parametrize("batch", [False, True], ids=["publish", "publish_many"])
    def test_a_key_committed_while_waiting_returns_the_committed_event(
            self, dsn: str, db: psycopg.Connection, batch: bool) -> None:
        """A publish blocked on another transaction's uncommitted key returns that event's id once it commits."""
        event = outbox.Event("job.completed", job_completed(), "org_a", dedupe_key="job_abc123")
        results: list[str] = []
        with psycopg.connect(dsn) as first, psycopg.connect(dsn) as second:
            first_id = outbox.publish(first, event.event_type, event.data, org_id="org_a", dedupe_key="job_abc123")
            waiting_pid = second.info.backend_pid

            def publish_second() -> None:
                if batch:
                    results.extend(outbox.publish_many(second, [outbox.Event("webhook.test", webhook_test(), "org_a"),
                                                                event]))
                else:
                    results.append(outbox.publish(second, event.event_type, event.data, org_id="org_a",
                                                  dedupe_key="job_abc123"))
                second.commit()

            thread = threading.Thread(target=publish_second)
            thread.start()
            eventually(lambda: db.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                                          [waiting_pid]).fetchone() == ("Lock",),
                       "the second publish to wait for the first's key")
            first.commit()
            thread.join(30)
        assert results[-1] == first_id
        assert count(db, "outbox_event") == (2 if batch else 1)
