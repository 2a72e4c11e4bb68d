"""``make demo``: the whole flow on one machine in under a minute.

It starts (or uses) a PostgreSQL, applies the schema, starts a local receiver
that checks signatures exactly like the customer docs' Flask example, registers
two endpoints (one healthy, one always answering 500), publishes the four
DocExtract event types from application transactions with the typed helpers
(``outbox.job_finished``, ``outbox.publish_balance_change``; and one transaction that
rolls back), runs a deliverer until every delivery has finished, and prints
what happened, read back from the delivery log.

The retry delays are shortened to 0.2-3.2 s so the failing endpoint runs
through all six attempts quickly; production uses the contract's 5 s ... 1 h.
"""

import asyncio
import secrets
import time
from datetime import UTC, datetime, timedelta
from typing import TypedDict

import psycopg
from aiohttp import web

import outbox
from deliverer import settings as config
from deliverer.cli.output import ATTEMPT_HEADERS, DELIVERY_HEADERS, attempt_rows, delivery_rows, format_table
from deliverer.delivery.worker import Worker
from deliverer.dev import database as devdb
from deliverer.dev.receiver import Receiver, respond
from deliverer.dev.waiting import NeverHappened, aeventually
from deliverer.history import projection
from deliverer.history.queries import QUERIES as HISTORY_SQL
from deliverer.ops import logsetup as logconfig
from deliverer.registry import endpoints
from deliverer.security import sealing
from deliverer.storage import schema
from outbox import sqlfile

DEMO_SQL = sqlfile.load(__package__, "demo.sql")
DEMO_DELAYS = (0.2, 0.4, 0.8, 1.6, 3.2)
HEALTHY, BROKEN = "/webhooks/docextract", "/webhooks/broken"  # the receiver's two endpoints


async def _announce(request: web.Request, n: int) -> web.Response:
    """The healthy endpoint, once the signature has verified: say what arrived, answer 200 quickly."""
    event = await request.json()
    print(f"  receiver: verified {event['event']:<20} {request.headers['X-DocExtract-Event-Id']} "
          f"attempt {request.headers['X-DocExtract-Delivery-Attempt']}")
    return web.Response(text="OK")


# The application's debit, one statement that locks the org's balance row until commit and
# returns the balance before and after: what outbox.credits needs to decide on alerts.
# The org's credit settings (DocExtract keeps these per org and plan).
THRESHOLD, PLAN_ALLOWANCE, AVERAGE_JOB_COST, STARTING_BALANCE = 100, 2000, 2, 152


def _debit(conn: psycopg.Connection, org_id: str, amount: int, *, jobs_queued: int, now: datetime) -> list[str]:
    """Take ``amount`` credits and publish whatever the change crossed, in the caller's transaction."""
    row = conn.execute(DEMO_SQL["demo_debit_credits"], {"org_id": org_id, "amount": amount}).fetchone()
    assert row is not None, f"org {org_id} has no balance"
    old_balance, new_balance = row
    return outbox.publish_balance_change(
        conn, org_id=org_id, old_balance=old_balance, new_balance=new_balance, threshold=THRESHOLD,
        plan_allowance=PLAN_ALLOWANCE, average_job_cost=AVERAGE_JOB_COST, jobs_queued=jobs_queued, now=now,
    )


class _Job(TypedDict):
    job_id: str
    org_id: str
    extractor_id: str


def _publish_business_events(dsn: str, org_id: str) -> dict[str, float]:
    """Application transactions: each business change and its event commit together.

    Every event comes from the typed helpers: ``outbox.job_finished`` for the two
    job events, ``outbox.publish_balance_change`` for the two credit alerts.
    """
    now = datetime.now(UTC)
    committed: dict[str, float] = {}
    job: _Job = {"job_id": "job_" + secrets.token_hex(6), "org_id": org_id, "extractor_id": "ext_def456"}
    invoice = outbox.JobResult(
        extracted_data={"invoice_number": "INV-2024-001", "total_amount": 1250.50, "invoice_date": "2024-11-15"},
        confidence={"invoice_number": 0.98, "total_amount": 0.95, "invoice_date": 0.99},
    )
    with psycopg.connect(dsn) as conn:
        conn.execute(DEMO_SQL["demo_create_tables"])
        conn.execute(DEMO_SQL["demo_set_balance"], {"org_id": org_id, "balance": STARTING_BALANCE})
        conn.commit()

        # The job completes and costs 2 credits: 152 -> 150 stays above the threshold, so no alert.
        with conn.transaction():
            conn.execute(DEMO_SQL["demo_save_job"], {"id": job["job_id"], "org_id": org_id, "status": "completed"})
            published = _debit(conn, org_id, 2, jobs_queued=0, now=now)
            published += outbox.publish_many(conn, [outbox.job_finished(
                **job, outcome=invoice, created_at=now - timedelta(seconds=5),
                started_at=now - timedelta(milliseconds=4532), finished_at=now, cost_credits=2,
                metadata={"customer_id": "cust_123", "source": "email"},
            )])
        committed.update(dict.fromkeys(published, time.perf_counter()))

        failed_job: _Job = {**job, "job_id": "job_" + secrets.token_hex(6)}
        with conn.transaction():
            conn.execute(DEMO_SQL["demo_save_job"], {"id": failed_job["job_id"], "org_id": org_id,
                                                    "status": "failed"})
            (event_id,) = outbox.publish_many(conn, [outbox.job_finished(
                **failed_job, outcome=outbox.JobError("document_unreadable",
                                                      "Document quality is too low to extract text",
                                                      "Please provide a higher quality scan or image"),
                created_at=now - timedelta(seconds=1.4), started_at=now - timedelta(seconds=1.2), finished_at=now,
                cost_credits=0, metadata={"customer_id": "cust_123"},
            )])
        committed[event_id] = time.perf_counter()

        # A batch of 50 jobs takes 100 credits: 150 -> 50 falls below the threshold of 100.
        with conn.transaction():
            (event_id,) = _debit(conn, org_id, 100, jobs_queued=0, now=now)
        committed[event_id] = time.perf_counter()

        # The last 50 credits: the balance reaches zero with 5 jobs still queued.
        with conn.transaction():
            (event_id,) = _debit(conn, org_id, 50, jobs_queued=5, now=now)
        committed[event_id] = time.perf_counter()

        # A transaction that rolls back takes its event with it.
        conn.execute(DEMO_SQL["demo_save_job"], {"id": "job_rolled_back", "org_id": org_id, "status": "completed"})
        rolled_back: _Job = {**job, "job_id": "job_rolled_back"}
        outbox.publish_many(conn, [outbox.job_finished(
            **rolled_back, outcome=outbox.JobResult({}, {}), created_at=now,
            started_at=now, finished_at=now, cost_credits=0,
        )])
        conn.rollback()
    return committed


async def _wait_until_finished(dsn: str, org_id: str, timeout: float) -> bool:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        async def finished() -> bool:
            row = await (await conn.execute(HISTORY_SQL["open_deliveries"], {"org_id": org_id})).fetchone()
            return bool(row and row[0] == 0)
        try:
            await aeventually(finished, "every delivery to be delivered or failed", timeout=timeout, interval=0.1)
        except NeverHappened:
            return False
    return True


async def main(database_url: str | None) -> int:
    sealing.use_development_key()
    print("== DocExtract webhooks demo ==")
    logconfig.configure("error", "console")
    with devdb.database(database_url, use_docker=False) as dsn:
        print(f"database: {'DATABASE_URL' if database_url else 'embedded PostgreSQL'}")
        with psycopg.connect(dsn, autocommit=True) as conn:
            schema.migrate(conn)

        # A customer's endpoint: checks X-DocExtract-Signature over the raw body like the docs' Flask
        # example and answers 401 when it does not match; the other path is a customer whose database is down.
        receiver = Receiver(reject_bad_signatures=True)
        receiver.behave(HEALTHY, _announce)
        receiver.behave(BROKEN, respond(500, "database is down"))
        await receiver.start()

        org_id = "org_demo_" + secrets.token_hex(4)
        with psycopg.connect(dsn, autocommit=True) as conn:
            healthy = endpoints.add(conn, org_id=org_id, url=receiver.url(HEALTHY),
                                    description="healthy receiver", allow_insecure=True)
            broken = endpoints.add(conn, org_id=org_id, url=receiver.url(BROKEN),
                                   event_types=["job.failed", "credits.depleted"],
                                   description="always answers 500", allow_insecure=True)
        receiver.secrets[HEALTHY] = healthy.secret or ""
        print(f"org {org_id}: endpoint {healthy.id} (all events, healthy), "
              f"{broken.id} (job.failed + credits.depleted, answers 500)")

        settings = config.Settings(database_url=dsn, retry_delays=DEMO_DELAYS, allow_insecure_urls=True,
                                   poll_interval=0.2).validated()
        stop = asyncio.Event()
        async with Worker(settings) as worker:
            running = asyncio.create_task(worker.run(stop))
            print("publishing 4 events in application transactions, and 1 in a transaction that rolls back:")
            committed = await asyncio.to_thread(_publish_business_events, dsn, org_id)
            finished = await _wait_until_finished(dsn, org_id, timeout=45)
            stop.set()
            await running
        await receiver.stop()

        with psycopg.connect(dsn, autocommit=True) as conn:
            print("\nDeliveries (state derived from the append-only log):")
            columns = [0, 2, 3, 5, 7]  # delivery, type, endpoint, state, attempts
            print(format_table([DELIVERY_HEADERS[i] for i in columns],
                               [[r[i] for i in columns] for r in delivery_rows(conn, org_id, 50)]))
            print("\nAttempts:")
            print(format_table(ATTEMPT_HEADERS, attempt_rows(conn, org_id)))
            consistent = not projection.diff(conn)
        received: dict[str, float] = {}  # event id -> when its first verified request arrived (perf_counter)
        for request in receiver.to(HEALTHY):
            if request.signature_ok:
                received.setdefault(request.event_id, request.at)
        rejected = sum(1 for request in receiver.requests if request.signature_ok is False)
        latencies = sorted((received[e] - t) * 1000 for e, t in committed.items() if e in received)
        print(f"\nevents committed: {len(committed)}, verified by the receiver: {len(received)}, "
              f"bad signatures: {rejected}, rolled-back event delivered: no")
        if latencies:
            print(f"commit-to-receipt: {', '.join(f'{ms:.1f} ms' for ms in latencies)}")
        print(f"projection rebuilt from the log matches the live queue: {'yes' if consistent else 'NO'}")
        ok = finished and len(received) == len(committed) and rejected == 0 and consistent
        print("demo finished" if ok else "demo FAILED: see above")
        return 0 if ok else 1
