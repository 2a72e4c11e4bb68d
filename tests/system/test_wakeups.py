"""Worker processes and their wake-ups: a commit wakes an idle worker, a killed one is taken over, a cut
connection is reopened. How many notifications producers send is in tests/integration/test_wakeups.py.
"""

import asyncio
import signal
from pathlib import Path

import psycopg

import outbox
from tests.support import Receiver, add_endpoint, aeventually, count, hold_until, webhook_test, worker_asleep
from tests.support.processes import WorkerProcess


async def test_a_commit_wakes_an_idle_worker(dsn: str, db: psycopg.Connection, receiver: Receiver,
                                             tmp_path: Path) -> None:
    """With polling set to a minute, an event still arrives: the notification woke the worker."""
    add_endpoint(db, receiver, "/hook")
    worker = WorkerProcess(dsn, "w", tmp_path, DELIVERER_POLL_INTERVAL="60")
    await worker.start()
    try:
        await worker.wait_started()
        await aeventually(lambda: worker_asleep(db, "w"), "the worker to go to sleep for up to a minute")
        with psycopg.connect(dsn) as conn:
            event_id = outbox.publish(conn, "webhook.test", webhook_test(), org_id="org_a")
            conn.commit()
        await receiver.wait_for(1, timeout=20)
    finally:
        assert await worker.stop() == 0
    assert receiver.event_ids() == [event_id]


async def test_worker_killed_mid_send_is_taken_over_after_its_lease(
        dsn: str, db: psycopg.Connection, receiver: Receiver, tmp_path: Path) -> None:
    """SIGKILL during a send: another process retries after the lease, and the lost attempt is in the log."""
    add_endpoint(db, receiver, "/hook")
    hang = asyncio.Event()
    receiver.behave("/hook", hold_until(hang, first=1))
    fast = {"DELIVERER_HTTP_TIMEOUT": "1", "DELIVERER_LEASE_SECONDS": "6", "DELIVERER_POLL_INTERVAL": "0.5"}
    doomed = WorkerProcess(dsn, "doomed", tmp_path, **fast)
    survivor = WorkerProcess(dsn, "survivor", tmp_path, **fast)
    try:
        await doomed.start()
        await doomed.wait_started()
        with psycopg.connect(dsn) as conn:
            event_id = outbox.publish(conn, "webhook.test", webhook_test(), org_id="org_a")
            conn.commit()
        await receiver.wait_for(1)
        assert doomed.proc is not None
        doomed.proc.send_signal(signal.SIGKILL)
        await doomed.proc.wait()
        await survivor.start()
        await receiver.wait_for(2, timeout=30)
        await aeventually(lambda: count(db, "delivery_queue") == 0, "the retried delivery to leave the queue")
    finally:
        hang.set()
        doomed.kill()
        assert await survivor.stop() == 0
    assert receiver.event_ids() == [event_id, event_id]
    history = db.execute("SELECT kind, attempt, outcome, worker_id FROM delivery_log ORDER BY seq").fetchall()
    assert history == [
        ("scheduled", 0, None, None),
        ("attempt_abandoned", 1, "unknown", "doomed"),
        ("attempt_finished", 2, "succeeded", "survivor"),
    ]


async def test_worker_survives_its_connections_being_terminated(
        dsn: str, db: psycopg.Connection, receiver: Receiver, tmp_path: Path) -> None:
    """pg_terminate_backend on every worker connection: the worker reconnects and keeps delivering."""
    add_endpoint(db, receiver, "/hook")
    worker = WorkerProcess(dsn, "w", tmp_path, DELIVERER_POLL_INTERVAL="0.2")
    await worker.start()
    try:
        await worker.wait_started()
        with psycopg.connect(dsn) as conn:
            outbox.publish(conn, "webhook.test", webhook_test(), org_id="org_a")
            conn.commit()
        await receiver.wait_for(1)
        killed = db.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                            "WHERE application_name LIKE 'deliverer %'").fetchone()
        assert killed[0] >= 1
        with psycopg.connect(dsn) as conn:
            outbox.publish(conn, "webhook.test", webhook_test(), org_id="org_a")
            conn.commit()
        await receiver.wait_for(2, timeout=30)
    finally:
        assert await worker.stop() == 0
    assert "database unavailable; reconnecting" in worker.log() or "connection lost" in worker.log()
