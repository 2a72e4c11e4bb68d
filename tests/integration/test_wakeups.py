"""Wake-ups: one notification per producer transaction, and none for an event nobody subscribed to.

Worker processes acting on the notifications are in tests/system/test_wakeups.py.
"""

import psycopg

import outbox
from deliverer.delivery.worker import CHANNEL
from tests.support import webhook_test


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
