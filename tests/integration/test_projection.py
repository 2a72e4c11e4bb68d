"""delivery_queue is a projection of delivery_log: rebuilt from the log it is identical."""

import psycopg

import outbox
from deliverer.delivery.worker import Worker
from deliverer.history import projection
from tests.support import FakeClock, Receiver, add_endpoint, job_completed, settings_for


def snapshot(db: psycopg.Connection) -> list[tuple]:
    return db.execute("SELECT * FROM delivery_queue ORDER BY delivery_id").fetchall()


async def test_rebuilt_queue_equals_live_queue_after_a_mixed_run(
        dsn: str, db: psycopg.Connection, receiver: Receiver, clock: FakeClock) -> None:
    """Deliveries that succeeded, failed, are retrying and were taken over rebuild exactly; one leased
    goes back to its state before the lease (the attempt in progress is not a fact yet), and the
    outcome of that lease is then fenced off as a late result."""
    add_endpoint(db, receiver, "/ok", org_id="org_ok")
    add_endpoint(db, receiver, "/down", org_id="org_down")
    add_endpoint(db, receiver, "/flaky", org_id="org_flaky")
    receiver.fail_first("/down", 1000)
    receiver.fail_first("/flaky", 1000)

    def publish(org_id: str) -> None:
        with psycopg.connect(dsn) as conn:
            outbox.publish(conn, "job.completed", job_completed(org_id=org_id), org_id=org_id)
            conn.commit()

    async with Worker(settings_for(dsn, worker_id="A", retry_delays=(5, 30)), clock=clock) as a, \
               Worker(settings_for(dsn, worker_id="B", retry_delays=(5, 30)), clock=clock) as b:
        publish("org_ok")
        await a.run_once()                    # delivered
        publish("org_down")
        for wait in (5, 30, 0):               # three attempts, then failed
            await a.run_once()
            clock.advance(wait)
        publish("org_ok")
        assert len(await b.claim(10)) == 1    # B leases it and dies
        clock.advance(31)
        publish("org_flaky")
        assert len(await a.run_once()) == 2   # A takes over B's delivery; the flaky one is retrying
        publish("org_ok")
        before_lease = snapshot(db)
        [in_flight] = await a.claim(10)      # left in flight

        states = sorted(db.execute("SELECT state FROM delivery_state").fetchall())
        assert states == [("delivered",), ("delivered",), ("failed",), ("pending",), ("retrying",)]
        now = sorted(db.execute("SELECT state FROM delivery_current").fetchall())
        assert now == [("delivered",), ("delivered",), ("failed",), ("in_flight",), ("retrying",)]
        assert db.execute("SELECT count(*) FROM delivery_log WHERE kind = 'attempt_abandoned'").fetchone() == (1,)

        assert projection.diff(db) == []
        projection.rebuild(db)
        assert snapshot(db) == before_lease
        assert projection.diff(db) == []

        [(_, kind, _)] = await a.record([await a.attempt(in_flight)])
        assert kind == "late_result"
        assert snapshot(db) == before_lease


def test_a_queue_that_drifted_is_reported_and_repaired(dsn: str, db: psycopg.Connection,
                                                       receiver: Receiver) -> None:
    """diff names the rows where the projection disagrees with the log; rebuild puts them right."""
    add_endpoint(db, receiver, "/ok")
    with psycopg.connect(dsn) as conn:
        outbox.publish(conn, "job.completed", job_completed(), org_id="org_a")
        conn.commit()
    before = snapshot(db)
    db.execute("UPDATE delivery_queue SET attempt = 4")
    assert [row[0] for row in projection.diff(db)] == ["only_live", "only_log"]
    assert projection.rebuild(db) == 1
    assert snapshot(db) == before
