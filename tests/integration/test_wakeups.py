"""Wake-ups: one notification per producer transaction, and none for an event nobody subscribed to.

Eight in-process workers show a commit wakes about one of them; worker processes acting on the
notifications are in tests/system/test_wakeups.py.
"""

import asyncio
import contextlib

import psycopg

import outbox
from deliverer.delivery import wakeups
from deliverer.delivery.worker import CHANNEL, Worker
from tests.support import Receiver, add_endpoint, aeventually, settings_for, webhook_test


def test_one_notification_per_transaction(dsn: str, db: psycopg.Connection) -> None:
    """Fifty publishes in one transaction wake the deliverers once."""
    db.execute("INSERT INTO webhook_endpoint (id, org_id, url, secret) VALUES ('ep_1', 'org_a', 'https://e.x', 's')")
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute(f"LISTEN {CHANNEL}")
        with psycopg.connect(dsn) as conn:
            for _ in range(50):
                outbox.publish(conn, "webhook.test", webhook_test(), org_id="org_a")
            conn.commit()
            outbox.publish(conn, "webhook.test", webhook_test(), org_id="org_a")
            conn.commit()
        received = list(listener.notifies(timeout=1))
    assert len(received) == 2


def test_no_notification_without_a_delivery(dsn: str, db: psycopg.Connection) -> None:
    """An event nobody subscribed to wakes nobody."""
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute(f"LISTEN {CHANNEL}")
        with psycopg.connect(dsn) as conn:
            outbox.publish(conn, "webhook.test", webhook_test(), org_id="org_without_endpoints")
            conn.commit()
        assert list(listener.notifies(timeout=0.5)) == []


async def test_a_commit_wakes_one_of_eight_idle_workers(dsn: str, db: psycopg.Connection,
                                                        receiver: Receiver) -> None:
    """With eight idle workers, each commit is claimed by about one of them, not all eight."""
    add_endpoint(db, receiver, "/hook")
    workers = [Worker(settings_for(dsn, worker_id=f"w{i}", poll_interval=60.0)) for i in range(8)]
    claims = {w.worker_id: [0, 0] for w in workers}  # claims, empty claims
    for worker in workers:
        claim = worker.claimer.claim

        async def counted(limit: int, *, _claim=claim, _id=worker.worker_id, **options):  # type: ignore[no-untyped-def]
            got = await _claim(limit, **options)
            claims[_id][0] += 1
            claims[_id][1] += not got
            return got
        worker.claimer.claim = counted  # type: ignore[method-assign]
    stop = asyncio.Event()
    async with contextlib.AsyncExitStack() as stack:
        for worker in workers:
            await stack.enter_async_context(worker)
        runs = [asyncio.create_task(w.run(stop)) for w in workers]
        try:
            await aeventually(lambda: all(len(w.listener.peers) == 8 for w in workers), "every worker to see all eight",
                              timeout=wakeups.BEAT * 3)
            before = sum(c[1] for c in claims.values())
            events = 20
            for _ in range(events):
                with psycopg.connect(dsn) as conn:
                    outbox.publish(conn, "webhook.test", webhook_test(), org_id="org_a")
                    conn.commit()
                await receiver.wait_for(len(receiver.requests) + 1, timeout=20)
            empty = sum(c[1] for c in claims.values()) - before
        finally:
            stop.set()
            await asyncio.gather(*runs)
    assert len(receiver.requests) == events
    # Woken all, the seven others would claim nothing: 7 empty claims an event (159 for 20 when measured).
    # A few remain: a worker woken while it claims claims once more, and finds its row already taken.
    assert empty <= events / 2, f"{empty} empty claims for {events} events: {claims}"
