"""Leases and fencing: a worker that dies or stalls mid-send loses nothing and overwrites nothing."""

import asyncio

import psycopg

import outbox
from deliverer.delivery.worker import Claimed, Result, Worker
from tests.support import FakeClock, Receiver, add_endpoint, hold_until, settings_for, webhook_test

LEASE = 30


def publish_one(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        event_id = outbox.publish(conn, "webhook.test", webhook_test(), org_id="org_a")
        conn.commit()
    return event_id


def history(db: psycopg.Connection) -> list[tuple]:
    return db.execute("SELECT kind, attempt, outcome, worker_id FROM delivery_log ORDER BY seq").fetchall()


class TestLeaseExpiry:
    async def test_expired_lease_mid_send_is_redelivered_and_late_result_is_fenced(
            self, dsn: str, db: psycopg.Connection, receiver: Receiver, clock: FakeClock) -> None:
        """A send stuck past its lease is taken over; the stuck worker's late success changes nothing."""
        add_endpoint(db, receiver, "/hook")
        release = asyncio.Event()
        receiver.behave("/hook", hold_until(release, first=1))
        event_id = publish_one(dsn)

        async with Worker(settings_for(dsn, worker_id="A", lease_seconds=LEASE),
                          clock=clock) as a, \
                   Worker(settings_for(dsn, worker_id="B"), clock=clock) as b:
            [claimed] = await a.claim(10)
            stuck = asyncio.create_task(a.attempt(claimed))
            await receiver.wait_for(1)
            clock.advance(LEASE - 1)
            assert await b.run_once() == [], "taken over before the lease ran out"
            clock.advance(2)
            [taken_over] = await b.run_once()
            assert taken_over.claimed.attempt == 2 and taken_over.outcome.succeeded
            release.set()
            late = await stuck
            assert late.outcome.succeeded
            [(_, kind, _)] = await a.record([late])

        assert kind == "late_result"
        assert receiver.event_ids() == [event_id, event_id]
        # One row per attempt, with the worker that made it: A's lost attempt is logged when B's claim
        # finds its lease run out, starting when A's lease was taken.
        assert history(db) == [
            ("scheduled", 0, None, None),
            ("attempt_abandoned", 1, "unknown", "A"),
            ("attempt_finished", 2, "succeeded", "B"),
            ("late_result", 1, "succeeded", "A"),
        ]
        [abandoned_start] = db.execute(
            "SELECT started_at FROM delivery_log WHERE kind = 'attempt_abandoned'").fetchone() or [None]
        assert abandoned_start is not None and abandoned_start <= late.started_at
        assert db.execute("SELECT state, attempt FROM delivery_state").fetchall() == [("delivered", 2)]

    async def test_late_failure_cannot_overwrite_the_new_lease(
            self, dsn: str, db: psycopg.Connection, receiver: Receiver, clock: FakeClock) -> None:
        """While B holds attempt 2, A's late failure for attempt 1 neither reschedules nor unlocks it."""
        add_endpoint(db, receiver, "/hook")
        receiver.fail_first("/hook", 1)
        publish_one(dsn)
        async with Worker(settings_for(dsn, worker_id="A"), clock=clock) as a, \
                   Worker(settings_for(dsn, worker_id="B"), clock=clock) as b:
            [claimed_a] = await a.claim(10)
            clock.advance(LEASE + 1)
            [claimed_b] = await b.claim(10)
            failure = await a.attempt(claimed_a)
            assert not failure.outcome.succeeded
            await a.record([failure])
            queue = db.execute("SELECT attempt, leased_by FROM delivery_queue").fetchall()
            assert queue == [(2, "B")]
            await b.record([await b.attempt(claimed_b)])
        assert db.execute("SELECT state FROM delivery_state").fetchall() == [("delivered",)]

    async def test_recording_the_same_batch_twice_changes_nothing(
            self, dsn: str, db: psycopg.Connection, receiver: Receiver, clock: FakeClock) -> None:
        """If a commit's reply is lost and the worker records again, the repeat is only a late result."""
        add_endpoint(db, receiver, "/hook")
        receiver.fail_first("/hook", 1)
        publish_one(dsn)
        async with Worker(settings_for(dsn), clock=clock) as worker:
            [claimed] = await worker.claim(10)
            result = await worker.attempt(claimed)
            first = await worker.record([result])
            clock.advance(1)
            again = await worker.record([result])
        assert [row[1] for row in first] == ["attempt_finished"]
        assert [row[1] for row in again] == ["late_result"]
        due = db.execute("SELECT due_at FROM delivery_queue").fetchone()
        assert due == (first[0][2],), "the repeat moved the retry time"

    async def test_lease_lost_on_the_last_attempt_fails_the_delivery(
            self, dsn: str, db: psycopg.Connection, receiver: Receiver, clock: FakeClock) -> None:
        """An abandoned sixth attempt counts: the delivery fails instead of getting a seventh."""
        add_endpoint(db, receiver, "/hook")
        receiver.fail_first("/hook", 1000)
        publish_one(dsn)
        async with Worker(settings_for(dsn, worker_id="A"), clock=clock) as a, \
                   Worker(settings_for(dsn, worker_id="B"), clock=clock) as b:
            for _ in range(5):
                await a.run_once()
                clock.advance(3600)
            [claimed] = await a.claim(10)
            assert claimed.attempt == 6
            clock.advance(LEASE + 1)
            [expired] = await b.run_once()  # B takes it over, not to send it: to write that it failed
            assert (expired.abandoned, expired.retry_after, expired.outcome.error_class) == (True, None,
                                                                                           "lease_expired")
        assert len(receiver.requests) == 5
        assert db.execute("SELECT state, attempt FROM delivery_state").fetchall() == [("failed", 6)]
        assert history(db)[-1] == ("attempt_abandoned", 6, "unknown", "A")  # A made the attempt; B logged it
        assert db.execute("SELECT count(*) FROM delivery_queue").fetchone() == (0,)


async def claimed_twice(worker: Worker, db: psycopg.Connection) -> tuple[Claimed, Result, Claimed]:
    """The one delivery claimed and sent, the claim undone as by a crash, and claimed again."""
    [first] = await worker.claim(10)
    first_result = await worker.attempt(first)
    # What crash recovery leaves when the claim's commit was not flushed: the queue row
    # as before it (the log row is append-only and stays; it only matters here that the
    # queue forgot the lease).
    db.execute("UPDATE delivery_queue SET attempt = attempt - 1, leased_by = NULL, due_at = now()")
    db.commit()
    [second] = await worker.claim(10)
    return first, first_result, second


class TestCrashUndoneClaim:
    async def test_an_outcome_of_a_claim_a_crash_undid_cannot_settle_the_new_lease(
            self, dsn: str, db: psycopg.Connection, receiver: Receiver) -> None:
        """A database crash can undo a claim (it commits without waiting for the WAL flush) after its
        send: the same worker then claims the delivery again with the same attempt number. The first
        send's outcome must not settle that new lease: the lease end tells the two apart."""
        add_endpoint(db, receiver, "/hook")
        publish_one(dsn)
        async with Worker(settings_for(dsn, worker_id="A", lease_seconds=LEASE)) as worker:
            first, first_result, second = await claimed_twice(worker, db)
            assert (second.delivery_id, second.attempt) == (first.delivery_id, first.attempt)
            assert second.lease_until != first.lease_until
            assert await worker.record([first_result]) == [(first.delivery_id, "late_result", None)]
            assert db.execute("SELECT leased_by FROM delivery_queue").fetchall() == [("A",)]
            second_result = await worker.attempt(second)
            assert [row[1] for row in await worker.record([second_result])] == ["attempt_finished"]
        assert db.execute("SELECT count(*) FROM delivery_queue").fetchone() == (0,)

    async def test_both_outcomes_in_one_batch_settle_the_delivery_once(
            self, dsn: str, db: psycopg.Connection, receiver: Receiver) -> None:
        """Outcomes wait in memory while the database is away, so the undone lease's outcome and the new
        lease's can reach the log in one batch: one settles the delivery, the other is a late result."""
        add_endpoint(db, receiver, "/hook")
        publish_one(dsn)
        async with Worker(settings_for(dsn, worker_id="A", lease_seconds=LEASE)) as worker:
            _, first_result, second = await claimed_twice(worker, db)
            recorded = await worker.record([first_result, await worker.attempt(second)])
        assert sorted(kind for _, kind, _ in recorded) == ["attempt_finished", "late_result"]
        assert db.execute("SELECT kind, count(*) FROM delivery_log WHERE kind IN ('attempt_finished', 'late_result')"
                          " GROUP BY kind ORDER BY kind").fetchall() == [("attempt_finished", 1), ("late_result", 1)]


class TestClaimCommit:
    async def test_the_claims_asynchronous_commit_stays_in_its_own_transaction(
            self, dsn: str, db: psycopg.Connection, receiver: Receiver) -> None:
        """The claim commits without waiting for the WAL flush (see claim_deliveries), through a setting
        local to its transaction: the connection, which a transaction pooler hands to other clients,
        keeps synchronous commits for everything else."""
        add_endpoint(db, receiver, "/hook")
        publish_one(dsn)
        async with Worker(settings_for(dsn)) as worker:
            [claimed] = await worker.claim(10)
            conn = await worker.claimer.db.get()
            assert await (await conn.execute("SHOW synchronous_commit")).fetchone() == ("on",)
            in_transaction = await (await conn.execute(
                "SELECT current_setting('synchronous_commit') FROM "
                "(SELECT set_config('synchronous_commit', 'off', true)) AS s")).fetchone()
            assert in_transaction == ("off",)
            assert await (await conn.execute("SHOW synchronous_commit")).fetchone() == ("on",)
        # The lease is the attempt in progress: the claim writes no log row, and the attempt is logged when it ends.
        assert db.execute("SELECT kind FROM delivery_log WHERE delivery_id = %s ORDER BY seq",
                          [claimed.delivery_id]).fetchall() == [("scheduled",)]
        assert db.execute("SELECT leased_by IS NOT NULL, leased_at IS NOT NULL FROM delivery_queue").fetchall() == [
            (True, True)]
