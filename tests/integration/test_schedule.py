"""The retry schedule on a real delivery: the contract's delays, exactly six attempts, then failed.

The delays as arithmetic are in tests/unit/test_schedule.py.
"""

import psycopg

import outbox
from deliverer.delivery.worker import Worker
from tests.support import FakeClock, Receiver, add_endpoint, settings_for, webhook_test

SEED_OFFSETS = [0, 5, 35, 155, 755, 4355]  # attempt start times from the customer docs' table


async def _run_schedule(dsn: str, db: psycopg.Connection, clock: FakeClock) -> list[float]:
    """Step the fake clock to each due time until nothing is open; return attempt offsets in seconds."""
    starts = []
    async with Worker(settings_for(dsn), clock=clock) as worker:
        for _ in range(20):
            wait = await worker.seconds_until_due()
            if wait is None:
                break
            if wait > 0:
                clock.advance(wait - 0.001)
                assert await worker.run_once() == [], "claimed before it was due"
                clock.advance(0.001)
            results = await worker.run_once()
            starts += [r.started_at for r in results]
        clock.advance(86_400)
        assert await worker.run_once() == [], "retried after the last attempt"
    return [(s - starts[0]).total_seconds() for s in starts]


class TestScheduleWithInjectedClock:
    async def test_always_failing_gets_six_attempts_at_the_seed_offsets(
            self, dsn: str, db: psycopg.Connection, receiver: Receiver, clock: FakeClock) -> None:
        """A receiver that always fails is tried at 0, 5, 35, 155, 755 and 4355 s, then the delivery is failed."""
        add_endpoint(db, receiver, "/down")
        receiver.fail_first("/down", 1000, status=503)
        with psycopg.connect(dsn) as conn:
            outbox.publish(conn, "webhook.test", webhook_test(), org_id="org_a")
            conn.commit()
        assert await _run_schedule(dsn, db, clock) == SEED_OFFSETS
        assert len(receiver.requests) == 6
        assert db.execute("SELECT state, attempt FROM delivery_state").fetchall() == [("failed", 6)]
        assert db.execute("SELECT count(*) FROM delivery_queue").fetchone() == (0,)

    async def test_recovering_on_attempt_three_is_delivered(
            self, dsn: str, db: psycopg.Connection, receiver: Receiver, clock: FakeClock) -> None:
        """Two failures then a 200: delivered after three attempts at 0, 5 and 35 s."""
        add_endpoint(db, receiver, "/flaky")
        receiver.fail_first("/flaky", 2)
        with psycopg.connect(dsn) as conn:
            outbox.publish(conn, "webhook.test", webhook_test(), org_id="org_a")
            conn.commit()
        assert await _run_schedule(dsn, db, clock) == SEED_OFFSETS[:3]
        assert db.execute("SELECT state, attempt FROM delivery_state").fetchall() == [("delivered", 3)]
        outcomes = db.execute("SELECT outcome FROM delivery_log WHERE kind = 'attempt_finished' ORDER BY seq")
        assert [o for (o,) in outcomes] == ["failed", "failed", "succeeded"]
