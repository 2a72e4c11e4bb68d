"""The hot path's statements keep plans that read only what they need, whatever the queue's statistics say.

The claim keeps using its index when the queue is large and mostly not due.

A claim runs many times a second on every worker; if the planner stopped using
delivery_queue_due (an edited query, a dropped or changed index), every claim
would scan the whole queue, and a backlog of future retries would slow delivery
of everything that is due now.
"""

import json

import psycopg
import pytest

from deliverer.delivery.queries import QUERIES as DELIVERY_QUERIES
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


def _queue_rows_read(plan: dict) -> int:
    """Rows of delivery_queue that the plan's scans read, those its filters threw away included."""
    read = 0
    if plan.get("Relation Name") == "delivery_queue":
        read = (plan.get("Actual Rows", 0) + plan.get("Rows Removed by Filter", 0)) * plan.get("Actual Loops", 1)
    return read + sum(_queue_rows_read(child) for child in plan.get("Plans", []))


@pytest.mark.xfail(strict=True, reason="known: record_results joins the batch to the whole queue when the queue's "
                   "statistics say it is empty; finding the rows through an array of the batch's ids fixed it but "
                   "cost 20 us per delivery in the usual case (docs/performance.md)")
def test_writing_outcomes_reads_only_their_rows_after_the_queue_was_analysed_empty(db: psycopg.Connection) -> None:
    """Statistics taken while the queue was empty (autovacuum at a quiet moment) then meet a burst: a batch
    of 80 outcomes still reads its 80 rows by primary key, not the whole queue for each batch."""
    db.execute("ANALYZE delivery_queue")  # empty
    db.commit()
    db.execute("""INSERT INTO delivery_queue (delivery_id, event_id, endpoint_id, org_id, series, attempt, due_at)
                  SELECT gen_random_uuid(), gen_random_uuid(), 'ep_' || i % 10, 'org_plan', 1, 0, now()
                  FROM generate_series(1, 10000) AS i""")
    leased = db.execute("""UPDATE delivery_queue SET leased_by = 'w1', attempt = 1, due_at = now() + interval '60 s'
                           WHERE delivery_id IN (SELECT delivery_id FROM delivery_queue LIMIT 80)
                           RETURNING delivery_id, event_id, endpoint_id, org_id, series, attempt, due_at""").fetchall()
    db.commit()
    outcomes = [{"delivery_id": str(d), "event_id": str(e), "endpoint_id": ep, "org_id": org, "series": series,
                 "attempt": attempt, "outcome": "succeeded" if i % 2 else "failed", "retry_after": None if i % 2 else 5,
                 "started_at": due.isoformat(), "duration_ms": 1.0, "http_status": 200 if i % 2 else 500,
                 "lease_until": due.isoformat()}
                for i, (d, e, ep, org, series, attempt, due) in enumerate(leased)]
    params = {"results": json.dumps(outcomes), "worker_id": "w1", "now": None, "paced": True,
              "default_max_in_flight": 50}
    row = db.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + DELIVERY_QUERIES["record_results"], params).fetchone()
    db.rollback()
    assert row is not None
    read = _queue_rows_read(row[0][0]["Plan"])
    assert read <= 3 * len(leased), f"{read} queue rows read for {len(leased)} outcomes"
