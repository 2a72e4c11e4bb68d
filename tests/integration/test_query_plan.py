"""The claim statement keeps using its index when the queue is large and mostly not due.

A claim runs many times a second on every worker; if the planner stopped using
delivery_queue_due (an edited query, a dropped or changed index), every claim
would scan the whole queue, and a backlog of future retries would slow delivery
of everything that is due now.
"""

import psycopg

from deliverer.delivery.worker import Worker
from tests.support import settings_for

NOT_DUE = 50_000
DUE = 20


def _fill_queue(db: psycopg.Connection) -> None:
    db.execute(
        """INSERT INTO delivery_queue (delivery_id, event_id, endpoint_id, org_id, series, attempt, due_at)
           SELECT gen_random_uuid(), gen_random_uuid(), 'ep_plan', 'org_plan', 1, 0,
                  now() + interval '1 day' + i * interval '1 second'
           FROM generate_series(1, %(count)s) AS i""", {"count": NOT_DUE})
    db.execute(
        """INSERT INTO delivery_queue (delivery_id, event_id, endpoint_id, org_id, series, attempt, due_at)
           SELECT gen_random_uuid(), gen_random_uuid(), 'ep_plan', 'org_plan', 1, 0, now() - interval '1 second'
           FROM generate_series(1, %(count)s)""", {"count": DUE})
    db.execute("ANALYZE delivery_queue")


def _explain_claim(db: psycopg.Connection, dsn: str) -> str:
    settings = settings_for(dsn)
    worker = Worker(settings)
    rows = db.execute("EXPLAIN " + worker.claim_statement(settings.batch_size),
                      worker.claim_params(settings.batch_size)).fetchall()
    return "\n".join(row[0] for row in rows)


def test_claim_uses_the_due_index(db: psycopg.Connection, dsn: str) -> None:
    """With 50,000 deliveries not yet due, the claim finds the due ones through delivery_queue_due."""
    _fill_queue(db)
    plan = _explain_claim(db, dsn)
    assert "delivery_queue_due on delivery_queue" in plan, plan
    assert "Seq Scan on delivery_queue" not in plan, plan


def test_claim_with_a_test_clock_uses_the_due_index(db: psycopg.Connection, dsn: str) -> None:
    """The same holds when tests pass their own clock as ``now``."""
    _fill_queue(db)
    settings = settings_for(dsn)
    row = db.execute("SELECT now()").fetchone()
    assert row is not None
    worker = Worker(settings, clock=lambda: row[0])
    plan = "\n".join(r[0] for r in db.execute("EXPLAIN " + worker.claim_statement(settings.batch_size),
                                               worker.claim_params(settings.batch_size)).fetchall())
    assert "delivery_queue_due on delivery_queue" in plan, plan


async def test_a_workers_claims_keep_one_generic_plan(db: psycopg.Connection, dsn: str) -> None:
    """Claim after claim, PostgreSQL reuses the generic plan of the statement psycopg prepared, instead of
    planning each claim afresh (2.6 ms a claim in a drain). It keeps that plan only while it costs no more
    than the ones made for each claim's values, which a queue mostly not yet due once made it cost far more:
    the scan's length and the clock were parameters it could not know."""
    _fill_queue(db)
    db.commit()
    settings = settings_for(dsn)
    async with Worker(settings) as worker:
        for _ in range(20):
            await worker.claim(settings.batch_size)
        conn = await worker.claimer.db.get()
        cur = await conn.execute("SELECT generic_plans, custom_plans FROM pg_prepared_statements "
                                 "WHERE statement LIKE 'WITH walk AS%%'")
        plans = await cur.fetchall()
    assert len(plans) == 1, plans
    [(generic, custom)] = plans
    # psycopg prepares from the 6th run on, PostgreSQL tries 5 custom plans before it compares.
    assert custom <= 5 and generic >= 5, plans
