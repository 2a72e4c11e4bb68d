"""schema.sql: idempotent migration and append-only tables enforced by the database."""

from pathlib import Path

import psycopg
import pytest

import outbox
from deliverer import schema
from tests.conftest import webhook_test

APPEND_ONLY = ["outbox_event", "delivery_log"]


def test_migrate_is_idempotent(db: psycopg.Connection) -> None:
    """Applying the schema to a migrated database again changes nothing and raises nothing."""
    before = db.execute("SELECT table_name, column_name, data_type FROM information_schema.columns "
                        "WHERE table_schema = 'public' ORDER BY 1, 2").fetchall()
    schema.migrate(db)
    schema.migrate(db)
    after = db.execute("SELECT table_name, column_name, data_type FROM information_schema.columns "
                       "WHERE table_schema = 'public' ORDER BY 1, 2").fetchall()
    assert before == after


def test_packaged_schema_is_the_top_level_file() -> None:
    """The schema the installed package applies is schema.sql at the top of the repository."""
    top_level = Path(__file__).resolve().parent.parent / "schema.sql"
    assert schema.schema_sql() == top_level.read_text()


@pytest.mark.parametrize("table", APPEND_ONLY)
@pytest.mark.parametrize("statement", ["UPDATE {} SET org_id = 'x'", "DELETE FROM {}", "TRUNCATE {} CASCADE"])
def test_append_only_tables_refuse_changes(dsn: str, db: psycopg.Connection, table: str, statement: str) -> None:
    """UPDATE, DELETE and TRUNCATE of an append-only table raise, and the rows stay."""
    db.execute("INSERT INTO webhook_endpoint (id, org_id, url, secret) VALUES ('ep_1', 'org_a', 'https://e.x', 's')")
    with psycopg.connect(dsn) as conn:
        outbox.publish(conn, "webhook.test", webhook_test(), org_id="org_a")
        conn.commit()
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match=f"{table} is append-only"):
        db.execute(statement.format(table))
    assert db.execute(f"SELECT count(*) FROM {table}").fetchone()[0] >= 1
