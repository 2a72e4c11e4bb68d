"""Publishing when the database does not accept writes: one clear outbox error, nothing written.

A server set read-only (or a standby) says so to the client, and publish refuses
before sending anything, leaving the caller's transaction usable. A transaction
made read-only by the caller is refused by the server itself: the same error,
which says to roll back.
"""

import psycopg
import pytest
import sqlalchemy
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import Session

import outbox
from tests.support import count, webhook_test


@pytest.fixture
def read_only_dsn(dsn: str, db: psycopg.Connection) -> str:
    """The test database with default_transaction_read_only on for every new session."""
    name = db.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]
    db.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    db.commit()
    return dsn


def _events(db: psycopg.Connection) -> int:
    return count(db, "outbox_event")


def test_a_read_only_server_is_refused_before_writing_and_the_transaction_goes_on(
        read_only_dsn: str, db: psycopg.Connection) -> None:
    with psycopg.connect(read_only_dsn) as conn:
        conn.execute("SELECT 1")  # the caller's transaction has begun
        with pytest.raises(outbox.WritesRefused, match="default_transaction_read_only is on") as refused:
            outbox.publish(conn, "webhook.test", webhook_test(), org_id="org_1")
        assert refused.value.transaction_usable
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS  # not aborted
        assert conn.execute("SELECT 2").fetchone() == (2,)
        with pytest.raises(outbox.WritesRefused):
            outbox.publish_many(conn, [outbox.Event("webhook.test", webhook_test(), "org_1")])
        conn.commit()
    assert _events(db) == 0


async def test_async_and_sqlalchemy_connections_are_refused_the_same_way(read_only_dsn: str,
                                                                        db: psycopg.Connection) -> None:
    async with await psycopg.AsyncConnection.connect(read_only_dsn) as conn:
        with pytest.raises(outbox.WritesRefused) as refused:
            await outbox.apublish(conn, "webhook.test", webhook_test(), org_id="org_1")
        assert refused.value.transaction_usable
    engine = sqlalchemy.create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(read_only_dsn))
    with Session(engine) as session, pytest.raises(outbox.WritesRefused):
        outbox.publish(session, "webhook.test", webhook_test(), org_id="org_1")
    engine.dispose()
    async_engine = create_async_engine("postgresql+psycopg://",
                                       async_creator=lambda: psycopg.AsyncConnection.connect(read_only_dsn))
    async with async_engine.connect() as sa_conn:
        with pytest.raises(outbox.WritesRefused):
            await outbox.apublish(sa_conn, "webhook.test", webhook_test(), org_id="org_1")
    await async_engine.dispose()
    assert _events(db) == 0


def test_a_read_only_transaction_is_refused_by_the_server_and_rolled_back(dsn: str, db: psycopg.Connection) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute("SET TRANSACTION READ ONLY")
        with pytest.raises(outbox.WritesRefused, match=r"ReadOnlySqlTransaction.*roll back") as refused:
            outbox.publish(conn, "webhook.test", webhook_test(), org_id="org_1")
        assert not refused.value.transaction_usable
        conn.rollback()
        outbox.publish(conn, "webhook.test", webhook_test(), org_id="org_1")  # the connection is fine
        conn.commit()
    assert _events(db) == 1


def test_sqlalchemy_read_only_transaction_is_refused_by_the_server(dsn: str, db: psycopg.Connection) -> None:
    engine = sqlalchemy.create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(dsn))
    with Session(engine) as session:
        session.execute(sqlalchemy.text("SET TRANSACTION READ ONLY"))
        with pytest.raises(outbox.WritesRefused, match="roll back"):
            outbox.publish(session, "webhook.test", webhook_test(), org_id="org_1")
        session.rollback()
    engine.dispose()
    assert _events(db) == 0
