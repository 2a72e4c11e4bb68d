"""Security and endpoint health with real `deliverer run` processes: secrets kept out of logs, fair sharing.

The same properties of an in-process worker are in tests/integration/test_security.py.
"""

from pathlib import Path

import psycopg

import outbox
from tests.support import Receiver, add_endpoint, count, hanging_and_healthy, webhook_test
from tests.support.processes import WorkerProcess


def publish(dsn: str, org_id: str = "org_a") -> str:
    with psycopg.connect(dsn) as conn:
        event_id = outbox.publish(conn, "webhook.test", webhook_test(), org_id=org_id)
        conn.commit()
    return event_id


class TestSecretsAtRest:
    async def test_secrets_are_sealed_in_the_database_and_absent_from_logs(
            self, dsn: str, db: psycopg.Connection, receiver: Receiver, tmp_path: Path) -> None:
        """The database holds no secret in the clear, and a worker's log never shows one."""
        endpoint = add_endpoint(db, receiver, "/hook")
        receiver.fail_first("/hook", 1)
        dump = " ".join(str(v) for row in db.execute("SELECT * FROM webhook_endpoint") for v in row)
        assert endpoint.secret not in dump and "fernet:" in dump
        worker = WorkerProcess(dsn, "w", tmp_path, DELIVERER_LOG_LEVEL="debug",
                               DELIVERER_RETRY_DELAYS="0.1")
        await worker.start()
        try:
            await worker.wait_started()
            publish(dsn)
            await receiver.wait_for(2)
        finally:
            assert await worker.stop() == 0
        assert all(r.signature_ok for r in receiver.requests)
        assert endpoint.secret not in worker.log() and "whsec_" not in worker.log()




class TestFairSharing:
    async def test_a_hanging_endpoint_cannot_take_every_send(
            self, dsn: str, db: psycopg.Connection, receiver: Receiver, tmp_path: Path) -> None:
        """With a hanging endpoint holding its cap, a healthy endpoint's events are delivered meanwhile."""
        release = hanging_and_healthy(db, receiver)
        slow = [publish(dsn, "org_slow") for _ in range(20)]  # first in line
        healthy = [publish(dsn, "org_ok") for _ in range(20)]
        worker = WorkerProcess(dsn, "w", tmp_path, DELIVERER_MAX_IN_FLIGHT="8", DELIVERER_BATCH_SIZE="8",
                               DELIVERER_ENDPOINT_MAX_IN_FLIGHT="2", DELIVERER_HTTP_TIMEOUT="30",
                               DELIVERER_LEASE_SECONDS="60")
        await worker.start()
        try:
            # Without the cap the 8 slots fill with hanging sends and nothing else moves until they time out:
            # the wait must end before the 30 s HTTP timeout would free the slots anyway.
            await receiver.wait_until(lambda: len(receiver.to("/ok")) == len(healthy),
                                      "the healthy deliveries, while the hanging ones hold their cap", timeout=20)
            assert sorted(receiver.event_ids("/ok")) == sorted(healthy)
            assert len(receiver.to("/hang")) <= 2
        finally:
            release.set()
            assert await worker.stop() == 0
        assert set(receiver.event_ids("/hang")) <= set(slow)
        assert count(db, "outbox_event") == 40
