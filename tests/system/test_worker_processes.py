"""Several deliverer processes on one queue: every delivery sent, none twice."""

from pathlib import Path

import psycopg
import pytest

import outbox
from tests.support import Receiver, add_endpoint, aeventually, count, webhook_test
from tests.support.processes import WorkerProcess

EVENTS = 2000


@pytest.mark.parametrize("workers", [2, 4])
async def test_concurrent_workers_deliver_every_event_exactly_once(
        workers: int, dsn: str, db: psycopg.Connection, receiver: Receiver, tmp_path: Path) -> None:
    """2 and 4 processes competing with SKIP LOCKED over 2,000 events: the received set equals the published set.

    The endpoint's limits are the cluster's: it may have more requests open (max_in_flight 1,000) than one
    process sends at once (20), so the processes share it rather than one of them holding its whole allowance.
    """
    endpoint = add_endpoint(db, receiver, "/hook")
    db.execute("UPDATE webhook_endpoint SET max_in_flight = 1000 WHERE id = %s", [endpoint.id])
    db.commit()
    procs = [WorkerProcess(dsn, f"w{i}", tmp_path, DELIVERER_MAX_IN_FLIGHT="20", DELIVERER_BATCH_SIZE="20")
             for i in range(workers)]
    published: list[str] = []
    try:
        for proc in procs:
            await proc.start()
        for proc in procs:
            await proc.wait_started()
        with psycopg.connect(dsn) as conn:
            for _ in range(EVENTS // 100):  # 20 producer transactions, each waking every worker
                published += outbox.publish_many(conn, [outbox.Event("webhook.test", webhook_test(), "org_a")
                                                        for _ in range(100)])
                conn.commit()
        await receiver.wait_for(EVENTS, timeout=120)
        await aeventually(lambda: count(db, "delivery_queue") == 0, "every delivery to leave the queue", timeout=30)
    finally:
        codes = []
        for proc in procs:
            try:
                codes.append(await proc.stop())
            except TimeoutError:
                proc.kill()
                codes.append("hung")
    assert codes == [0] * workers, [p.log()[-2000:] for p in procs]
    received = receiver.event_ids()
    assert len(received) == EVENTS, "duplicates or losses"
    assert sorted(received) == sorted(published)
    assert all(r.signature_ok for r in receiver.requests)
    finished = db.execute("SELECT kind, outcome, count(*) FROM delivery_log WHERE kind <> 'scheduled' "
                          "GROUP BY kind, outcome ORDER BY kind").fetchall()  # kinds sort in the enum's order
    assert finished == [("attempt_finished", "succeeded", EVENTS)]  # one row per attempt
    busy = db.execute("SELECT count(DISTINCT worker_id) FROM delivery_log WHERE kind = 'attempt_finished'")
    assert busy.fetchone()[0] >= 2, "the workers did not share the work"
