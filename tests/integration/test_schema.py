"""schema.sql: idempotent migration, upgrades from released schemas, and integrity enforced by the database."""

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

import outbox
from deliverer.history import projection
from deliverer.storage import partitions, schema
from tests.support import count, webhook_test
from tests.support import database as testdb
from tests.support.schema import ENUM_COLUMNS, SCHEMA_BEFORE_ENUMS, SCHEMA_BEFORE_PARTITIONING, log_checks, log_columns

APPEND_ONLY = ["outbox_event", "delivery_log"]
KINDS = ["scheduled", "replay_requested", "attempt_started", "attempt_finished", "attempt_abandoned", "late_result"]
OUTCOMES = ["succeeded", "failed", "unknown"]

# What schema.sql defines, read back from the catalog. Partitions count once per
# partitioned table, whatever their names (an upgraded database has *_legacy ones).
LAYOUT = {
    "enums": """SELECT t.typname, array_agg(e.enumlabel ORDER BY e.enumsortorder)
                FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid GROUP BY 1 ORDER BY 1""",
    "casts": """SELECT castsource::regtype::text, casttarget::regtype::text, castcontext, castmethod
                FROM pg_cast WHERE castsource >= 16384 OR casttarget >= 16384 ORDER BY 1, 2""",
    "columns": """SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attidentity,
                         pg_get_expr(d.adbin, d.adrelid)
                  FROM pg_class c
                  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                  LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
                  WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v')
                    AND NOT c.relispartition
                  ORDER BY 1, a.attnum""",
    "partition columns": """SELECT DISTINCT pg_partition_root(c.oid)::text, a.attname,
                                   format_type(a.atttypid, a.atttypmod), a.attnotnull
                            FROM pg_class c
                            JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                            WHERE c.relnamespace = 'public'::regnamespace AND c.relispartition
                            ORDER BY 1, 2""",
    "constraints": """SELECT DISTINCT coalesce(pg_partition_root(conrelid), conrelid)::regclass::text, contype,
                             pg_get_constraintdef(oid)
                      FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2, 3""",
    "indexes": """SELECT DISTINCT coalesce(pg_partition_root(i.indrelid), i.indrelid)::regclass::text, i.indisunique,
                         regexp_replace(pg_get_indexdef(i.indexrelid), '^.* USING ', '')
                  FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
                  WHERE c.relnamespace = 'public'::regnamespace ORDER BY 1, 2, 3""",
    "views": "SELECT viewname, definition FROM pg_views WHERE schemaname = 'public' ORDER BY 1",
    "triggers": """SELECT DISTINCT coalesce(pg_partition_root(tgrelid), tgrelid)::regclass::text, tgname, tgtype,
                          tgfoid::regproc::text
                   FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1, 2""",
    "functions": "SELECT proname, prosrc FROM pg_proc WHERE pronamespace = 'public'::regnamespace ORDER BY 1",
}


def layout(db: psycopg.Connection) -> dict[str, list[tuple[Any, ...]]]:
    return {name: db.execute(query).fetchall() for name, query in LAYOUT.items()}


def test_migrate_is_idempotent(db: psycopg.Connection) -> None:
    """Applying the schema to a migrated database again changes nothing and raises nothing."""
    before = layout(db), partitions.list_partitions(db)
    assert schema.migrate(db) == []
    assert schema.migrate(db) == []
    assert (layout(db), partitions.list_partitions(db)) == before


def test_statement_by_statement_gives_the_layout_of_the_whole_file_at_once(empty_dsn: str,
                                                                          db: psycopg.Connection) -> None:
    """migrate applies schema.sql one statement at a time: the same layout as the file sent whole, as it was."""
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        with conn.transaction():
            conn.execute(schema.schema_sql())
            partitions.ensure(conn)
        assert layout(conn) == layout(db)


def test_a_failing_statement_undoes_the_whole_migration(empty_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The statements are one transaction: one that fails leaves the database as it was, without a table."""
    whole = schema.schema_sql()
    monkeypatch.setattr(schema, "schema_sql", lambda: whole + "\nSELECT 1 / 0;\n")
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.DivisionByZero):
            schema.migrate(conn)
        tables = conn.execute("SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace")
        assert tables.fetchone() == (0,)


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


def test_kind_and_outcome_are_enum_types_on_every_partition(db: psycopg.Connection) -> None:
    """delivery_log.kind and outcome are enums, on the DEFAULT partition and days maintenance creates later too."""
    created = schema.migrate(db, datetime.now(UTC) + 3 * timedelta(days=1))
    assert {d.table for d in created} == set(partitions.TABLES)
    assert dict(layout(db)["enums"]) == {"delivery_fact_kind": KINDS, "delivery_outcome": OUTCOMES}
    assert log_columns(db) == ENUM_COLUMNS
    assert log_checks(db) == []


LOG = """INSERT INTO delivery_log (recorded_at, kind, delivery_id, event_id, endpoint_id, org_id, series, attempt,
                                  outcome, next_attempt_at)
         VALUES (%(at)s, %(kind)s, %(delivery_id)s, %(event_id)s, 'ep_1', 'org_a', %(series)s, %(attempt)s,
                 %(outcome)s, %(next)s)"""


@pytest.mark.parametrize(("kind", "outcome", "error"), [
    ("finished", "succeeded", 'invalid input value for enum delivery_fact_kind: "finished"'),
    ("Scheduled", None, 'invalid input value for enum delivery_fact_kind: "Scheduled"'),
    ("", None, 'invalid input value for enum delivery_fact_kind: ""'),
    ("attempt_finished", "ok", 'invalid input value for enum delivery_outcome: "ok"'),
])
@pytest.mark.parametrize("table", ["delivery_log", "delivery_log_default"])
@pytest.mark.parametrize("typed", ["parameter", "text"])
def test_an_unknown_kind_or_outcome_is_refused(db: psycopg.Connection, kind: str, outcome: str | None, error: str,
                                               table: str, typed: str) -> None:
    """A kind or outcome outside its type is refused, named with the type, as a parameter or as text, anywhere."""
    cast = sql.SQL("::text" if typed == "text" else "")
    statement = sql.SQL("INSERT INTO {} (kind, delivery_id, event_id, endpoint_id, org_id, series, attempt, outcome) "
                        "VALUES (%s{}, gen_random_uuid(), gen_random_uuid(), 'ep_1', 'org_a', 1, 1, %s{})")
    with pytest.raises(psycopg.errors.InvalidTextRepresentation, match=error):
        db.execute(statement.format(sql.Identifier(table), cast, cast), [kind, outcome])
    assert db.execute("SELECT count(*) FROM delivery_log").fetchone() == (0,)


def test_text_converts_on_assignment_as_deliverers_before_the_enums_write_it(db: psycopg.Connection) -> None:
    """Text values, like a CASE of literals or a JSON recordset's text column, are written as the enum they name."""
    row = db.execute("""
        INSERT INTO delivery_log (kind, delivery_id, event_id, endpoint_id, org_id, series, attempt, outcome)
        SELECT CASE WHEN r.late THEN 'late_result' ELSE 'attempt_finished' END,
               gen_random_uuid(), gen_random_uuid(), 'ep_1', 'org_a', 1, 1, r.outcome
        FROM jsonb_to_recordset('[{"late": true, "outcome": "failed"}]') AS r (late boolean, outcome text)
        RETURNING kind, outcome, pg_typeof(kind)::text, pg_typeof(outcome)::text""").fetchone()
    assert row == ("late_result", "failed", "delivery_fact_kind", "delivery_outcome")


@pytest.fixture(params=[[SCHEMA_BEFORE_ENUMS], [SCHEMA_BEFORE_PARTITIONING],
                        [SCHEMA_BEFORE_PARTITIONING, SCHEMA_BEFORE_ENUMS]],
                ids=["checks", "unpartitioned", "unpartitioned-then-checks"])
def released(request: pytest.FixtureRequest, pg_server: str) -> Iterator[str]:
    """A database migrated by released versions of schema.sql in turn, the last one with CHECK constraints."""
    with testdb.empty_database(pg_server, "outbox_released") as name:
        url = testdb.url_of(pg_server, name)
        with psycopg.connect(url, autocommit=True) as conn:
            for path in request.param:
                with conn.transaction():
                    conn.execute(path.read_text())
                    if path == SCHEMA_BEFORE_ENUMS:
                        partitions.ensure(conn)  # as `deliverer migrate` did with it
        yield url


def record_history(db: psycopg.Connection) -> None:
    """Deliveries in every state, with facts of every kind and outcome, one of them old enough for no day partition."""
    now = datetime.now(UTC)
    old = now - timedelta(days=40)
    histories: list[list[tuple[str, int, int, str | None, bool]]] = [  # kind, series, attempt, outcome, due again
        [("scheduled", 1, 0, None, True), ("attempt_started", 1, 1, None, True)],
        [("scheduled", 1, 0, None, True), ("attempt_started", 1, 1, None, True),
         ("attempt_finished", 1, 1, "succeeded", False), ("late_result", 1, 1, "failed", False)],
        [("scheduled", 1, 0, None, True), ("attempt_started", 1, 1, None, True),
         ("attempt_finished", 1, 1, "failed", True)],
        [("scheduled", 1, 0, None, True), ("attempt_started", 1, 1, None, True),
         ("attempt_abandoned", 1, 1, "unknown", False), ("replay_requested", 2, 0, None, True)],
        [("scheduled", 1, 0, None, True), ("attempt_started", 1, 1, None, True),
         ("attempt_finished", 1, 1, "failed", False)],
    ]
    for n, history in enumerate(histories):
        started = old if n == 0 else now - timedelta(minutes=10)
        fact = {"delivery_id": uuid.uuid4(), "event_id": uuid.uuid4()}
        for i, (kind, series, attempt, outcome, due) in enumerate(history):
            at = started + i * timedelta(seconds=1)
            db.execute(LOG, fact | {"at": at, "kind": kind, "series": series, "attempt": attempt,
                                    "outcome": outcome, "next": at + timedelta(seconds=30) if due else None})
    db.execute("INSERT INTO webhook_endpoint (id, org_id, url, secret) VALUES ('ep_1', 'org_a', 'https://e.x', 's')")
    with psycopg.connect(db.info.dsn) as conn:
        outbox.publish(conn, "webhook.test", webhook_test(), org_id="org_a")
        conn.commit()
    # The queue as the released deliverer rebuilt it: today's rebuild writes the ordering columns too.
    with db.transaction():
        db.execute("TRUNCATE delivery_queue")
        db.execute("INSERT INTO delivery_queue (delivery_id, event_id, endpoint_id, org_id, series, attempt, due_at, "
                   "leased_by) SELECT delivery_id, event_id, endpoint_id, org_id, series, attempt, due_at, leased_by "
                   "FROM delivery_state WHERE state NOT IN ('delivered', 'failed')")


def test_migrate_turns_released_databases_into_the_same_enum_layout_without_changing_a_row(
        released: str, db: psycopg.Connection) -> None:
    """CHECK-constrained text becomes the enum types: the layout of a new database, the same rows, states and queue."""
    fresh = layout(db)
    with psycopg.connect(released, autocommit=True) as old:
        record_history(old)
        # outbox_event's and delivery_queue's columns as released: migrate adds the trace context's and the
        # ordering's, NULL in every old row.
        tables = ("delivery_log", "delivery_state",
                  "(SELECT delivery_id, event_id, endpoint_id, org_id, series, attempt, due_at, leased_by "
                  "FROM delivery_queue) AS q",
                  "(SELECT id, org_id, event_type, body, dedupe_key, created_at, txid FROM outbox_event) AS e")
        before = [old.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall() for t in tables]
        assert {state for (state,) in old.execute("SELECT state FROM delivery_state")} == {
            "pending", "in_flight", "delivered", "retrying", "failed"}
        assert {row[2] for row in before[0]} == set(KINDS)

        schema.migrate(old)

        assert log_columns(old) == ENUM_COLUMNS and log_checks(old) == []
        assert layout(old) == fresh
        assert [old.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall() for t in tables] == before
        assert old.execute("SELECT count(*) FROM outbox_event WHERE traceparent IS NOT NULL "
                           "OR tracestate IS NOT NULL OR ordering_key IS NOT NULL").fetchone() == (0,)
        assert old.execute("SELECT count(*) FROM delivery_queue WHERE ordering_key IS NOT NULL "
                           "OR txid IS NOT NULL").fetchone() == (0,)
        assert {kind for (kind,) in old.execute("SELECT DISTINCT kind FROM delivery_log")} == set(KINDS)
        assert projection.diff(old) == []
        upgraded = layout(old), partitions.list_partitions(old)
        assert schema.migrate(old) == []
        assert (layout(old), partitions.list_partitions(old)) == upgraded


def test_a_producer_upgraded_before_the_migration_publishes_and_orders_once_it_runs(released: str) -> None:
    """This library on a database not yet migrated uses the statements as released (the trace context and
    ordering key are not kept; no endpoint can be ordered yet), and the same connection uses today's once
    `deliverer migrate` has run: a fifo endpoint's delivery then has its place in the endpoint's order."""
    with psycopg.connect(released, autocommit=True) as admin, psycopg.connect(released) as producer:
        admin.execute("INSERT INTO webhook_endpoint (id, org_id, url, secret) "
                      "VALUES ('ep_1', 'org_a', 'https://e.x', 's')")
        outbox.publish(producer, "webhook.test", webhook_test(), org_id="org_a", ordering_key="acct_1")
        outbox.publish_many(producer, [outbox.Event("webhook.test", webhook_test(), "org_a", ordering_key="k")] * 2)
        producer.commit()
        assert count(admin, "delivery_queue") == 3

        schema.migrate(admin)
        admin.execute("UPDATE webhook_endpoint SET ordering = 'fifo'")
        event_id = outbox.publish(producer, "webhook.test", webhook_test(), org_id="org_a", ordering_key="acct_1")
        producer.commit()
        assert admin.execute("SELECT q.ordering_key, q.txid = e.txid FROM delivery_queue q "
                             "JOIN outbox_event e ON e.id = q.event_id WHERE q.event_id = %s",
                             [uuid.UUID(event_id.removeprefix("evt_"))]).fetchone() == ("acct_1", True)
