"""Retention: daily partitions created ahead, old ones dropped whole, never what an open delivery needs.

The pure parts (ranges, durations) are in tests/unit/test_retention.py; the command, a running deliverer
and the CronJob in tests/system/test_retention.py.
"""

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg import sql

import outbox
from deliverer.history import projection, replay
from deliverer.storage import partitions, schema
from deliverer.storage.queries import QUERIES
from outbox.ids import new_event_uuid
from tests.support import count, settings_for, webhook_test
from tests.support import database as testdb
from tests.support.partitions import DAY, delivery, finish, name, names, old_day, old_partitions, today
from tests.support.schema import ENUM_COLUMNS, SCHEMA_BEFORE_PARTITIONING, log_checks, log_columns


def actions(report: partitions.RetentionReport, action: str) -> set[str]:
    return {d.name for d in report.decisions if d.action == action}


def ids(db: psycopg.Connection, query: str) -> set[uuid.UUID]:
    return {row[0] for row in db.execute(query).fetchall()}


def test_migrate_creates_a_partition_per_day_from_yesterday_to_two_weeks_ahead(db: psycopg.Connection) -> None:
    """Both append-only tables are partitioned by UTC day from yesterday to 14 days ahead, plus DEFAULT, all guarded."""
    schema.migrate(db)  # in case the template was migrated before midnight
    kinds = db.execute("SELECT relname, relkind FROM pg_class "
                       "WHERE relname IN ('outbox_event', 'delivery_log') ORDER BY 1").fetchall()
    assert kinds == [("delivery_log", "p"), ("outbox_event", "p")]
    days = [today() + n * DAY for n in range(-1, partitions.DAYS_AHEAD + 1)]
    found = partitions.list_partitions(db)
    for table in partitions.TABLES:
        daily = [(p.name, p.low, p.high) for p in found if p.table == table and p.high is not None]
        assert daily[-len(days):] == [(name(table, d), d, d + DAY) for d in days]
        assert [p.name for p in found if p.table == table and p.high is None] == [f"{table}_default"]
    assert all(p.guarded for p in found)


def test_migrate_again_is_a_no_op_and_later_creates_only_the_new_days(db: psycopg.Connection) -> None:
    """A second migrate creates nothing; one three days later creates the three new days of each table."""
    schema.migrate(db)
    before = partitions.list_partitions(db)
    assert schema.migrate(db) == []
    assert partitions.list_partitions(db) == before
    created = schema.migrate(db, datetime.now(UTC) + 3 * DAY)
    last = today() + partitions.DAYS_AHEAD * DAY
    assert sorted((d.action, d.name) for d in created) == sorted(
        ("created", name(t, last + n * DAY)) for t in partitions.TABLES for n in (1, 2, 3))


def test_event_id_bounds_sort_between_the_ids_of_adjacent_milliseconds(db: psycopg.Connection) -> None:
    """PostgreSQL orders UUIDv7 ids bytewise: the bound of T sorts after every id of T - 1 ms and before those of T."""
    at = datetime(2025, 3, 1, tzinfo=UTC)
    ms = int(at.timestamp() * 1000)
    bound = partitions.event_id_bound(at)
    for _ in range(20):
        before, first = new_event_uuid(now_ms=ms - 1), new_event_uuid(now_ms=ms)
        assert db.execute("SELECT %s::uuid < %s::uuid, %s::uuid <= %s::uuid",
                          [before, bound, bound, first]).fetchone() == (True, True)


def test_retention_drops_partitions_older_than_the_cutoff_and_keeps_the_rest(db: psycopg.Connection) -> None:
    """Old day partitions of both tables are dropped with their rows; recent ones and the projection are untouched."""
    old = old_partitions(db)
    assert len(old) == 6
    delivery(db, old_day() + 12 * timedelta(hours=1), finished_at=old_day() + 13 * timedelta(hours=1))
    now = datetime.now(UTC)
    recent_event, recent = delivery(db, now - timedelta(hours=1), finished_at=now)
    open_event, still_open = delivery(db, now)
    before = names(db)

    report = partitions.retain(db, timedelta(days=30))

    assert actions(report, "dropped") == old
    assert names(db) == before - old
    assert ids(db, "SELECT id FROM outbox_event") == {recent_event, open_event}
    assert ids(db, "SELECT delivery_id FROM delivery_log") == {recent, still_open}
    assert projection.diff(db) == []
    assert projection.rebuild(db) == 1


def test_partitions_an_open_delivery_needs_are_skipped_until_it_closes(db: psycopg.Connection) -> None:
    """The event and log partitions of a still-open delivery are kept, and said so, until it is finished."""
    old_partitions(db)
    event_id, delivery_id = delivery(db, old_day() + 12 * timedelta(hours=1))
    delivery(db, old_day() - 12 * timedelta(hours=1), finished_at=old_day() - 11 * timedelta(hours=1))

    report = partitions.retain(db, timedelta(days=30))

    kept = {name("outbox_event", old_day()), name("delivery_log", old_day())}
    assert {d.name: d.reason for d in report.decisions if d.action == "skipped"} == {
        name("outbox_event", old_day()): "holds events of 1 open delivery",
        name("delivery_log", old_day()): "holds facts of 1 open delivery"}
    assert len(actions(report, "dropped")) == 4 and kept <= names(db)
    assert report.dedupe_before == old_day()  # keys of events still kept are kept too
    assert projection.diff(db) == [] and projection.rebuild(db) == 1
    assert any("skipped" in line and "holds events of 1 open delivery" in line for line in report.lines())

    finish(db, event_id, delivery_id)
    assert actions(partitions.retain(db, timedelta(days=30)), "dropped") == kept
    assert projection.diff(db) == []


def test_dry_run_reports_what_it_would_do_and_changes_nothing(db: psycopg.Connection) -> None:
    """--dry-run lists partitions it would drop and create and dedupe keys it would prune, and touches none."""
    old = old_partitions(db)
    delivery(db, old_day() + 12 * timedelta(hours=1), finished_at=old_day() + 13 * timedelta(hours=1))
    db.execute("INSERT INTO outbox_dedupe (org_id, dedupe_key, event_id, created_at) "
               "VALUES ('org_a', 'job_1', gen_random_uuid(), %s)", [old_day()])
    before = partitions.list_partitions(db), count(db, "outbox_event"), count(db, "delivery_log")

    report = partitions.retain(db, timedelta(days=30), now=datetime.now(UTC) + 2 * DAY, dry_run=True)

    assert actions(report, "would drop") == old
    assert actions(report, "would create") == {name(t, today() + (partitions.DAYS_AHEAD + n) * DAY)
                                               for t in partitions.TABLES for n in (1, 2)}
    assert report.dedupe_pruned == 1
    assert (partitions.list_partitions(db), count(db, "outbox_event"), count(db, "delivery_log")) == before
    assert count(db, "outbox_dedupe") == 1
    assert "(dry run: nothing was changed)" in report.lines()[0]


def test_dedupe_keys_older_than_the_cutoff_are_pruned_in_batches(dsn: str, db: psycopg.Connection,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys recorded before the cutoff go, however many batches that takes; newer keys stay."""
    monkeypatch.setattr(partitions, "DEDUPE_BATCH", 3)
    db.execute("INSERT INTO outbox_dedupe (org_id, dedupe_key, event_id, created_at) "
               "SELECT 'org_a', 'old_' || i, gen_random_uuid(), now() - interval '31 days' - i * interval '1 hour' "
               "FROM generate_series(1, 7) AS i")
    with psycopg.connect(dsn) as conn:
        outbox.publish(conn, "webhook.test", webhook_test(), org_id="org_a", dedupe_key="recent")
        conn.commit()

    report = partitions.retain(db, timedelta(days=30))

    assert report.dedupe_pruned == 7
    assert db.execute("SELECT dedupe_key FROM outbox_dedupe").fetchall() == [("recent",)]


@pytest.mark.parametrize("table", partitions.TABLES)
@pytest.mark.parametrize("which", ["day", "default"])
@pytest.mark.parametrize("statement", ["UPDATE {} SET org_id = 'x'", "DELETE FROM {}", "TRUNCATE {}"])
def test_every_partition_refuses_changes(db: psycopg.Connection, table: str, which: str, statement: str) -> None:
    """UPDATE, DELETE and TRUNCATE run straight against a partition, the DEFAULT one too, are refused; rows stay."""
    now = datetime.now(UTC)
    far = datetime(2200, 1, 1, tzinfo=UTC)  # beyond every partition: lands in DEFAULT
    at = now if which == "day" else far
    delivery(db, at, finished_at=at + timedelta(seconds=1))
    partition = name(table, partitions.floor(at)) if which == "day" else f"{table}_default"
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match=f"{table} is append-only"):
        db.execute(sql.SQL(statement).format(sql.Identifier(partition)))
    assert count(db, partition) >= 1


def test_lapsed_maintenance_never_fails_a_producer_and_is_reported(dsn: str, db: psycopg.Connection) -> None:
    """With today's partitions missing, publishing commits into DEFAULT; maintenance then skips today and says why."""
    schema.migrate(db)
    for table in partitions.TABLES:
        db.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name(table, today()))))
    db.execute("INSERT INTO webhook_endpoint (id, org_id, url, secret) VALUES ('ep_1', 'org_a', 'https://e.x', 's')")
    with psycopg.connect(dsn) as conn:
        outbox.publish(conn, "webhook.test", webhook_test(), org_id="org_a")
        conn.commit()
    assert (count(db, "outbox_event_default"), count(db, "delivery_log_default")) == (1, 1)

    decisions = schema.migrate(db)

    assert {(d.action, d.name) for d in decisions} == {("skipped", name(t, today())) for t in partitions.TABLES}
    assert all("default partition" in d.reason for d in decisions)
    report = partitions.retain(db, timedelta(days=30))
    assert {(d.name, d.reason) for d in report.decisions if d.high is None} == {
        (f"{t}_default", f"holds 1 row no other partition covers; see {partitions.RETENTION_DOCS}")
        for t in partitions.TABLES}
    assert (count(db, "outbox_event"), count(db, "delivery_log")) == (1, 1)


@pytest.fixture
def unpartitioned(pg_server: str) -> Iterator[str]:
    """A database created by schema.sql as it was before partitioning."""
    with testdb.empty_database(pg_server, "outbox_upgrade") as name:
        url = testdb.url_of(pg_server, name)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(SCHEMA_BEFORE_PARTITIONING.read_text())
        yield url


def table_columns(db: psycopg.Connection, table: str) -> list[str]:
    return [c.name for c in db.execute(f"SELECT * FROM {table} LIMIT 0").description or ()]


def test_migrate_upgrades_an_unpartitioned_database_without_losing_a_row(unpartitioned: str) -> None:
    """The old tables become partitions up to tomorrow: same rows, same state, enum types, seq goes on, append-only."""
    with psycopg.connect(unpartitioned, autocommit=True) as db:
        now = datetime.now(UTC)
        delivery(db, old_day(), finished_at=old_day() + timedelta(minutes=1))
        open_event, still_open = delivery(db, now - timedelta(hours=1))
        with psycopg.connect(unpartitioned) as conn:
            outbox.publish(conn, "webhook.test", webhook_test(), org_id="org_b", dedupe_key="job_1")
            conn.commit()
        tables = ("outbox_event", "delivery_log", "delivery_state", "delivery_queue", "outbox_dedupe")
        before_columns = {t: table_columns(db, t) for t in tables}
        snapshot = [db.execute(f"SELECT {', '.join(before_columns[t])} FROM {t} ORDER BY 1, 2").fetchall()
                    for t in tables]

        schema.migrate(db)

        assert db.execute("SELECT relname, relkind FROM pg_class WHERE relname IN ('outbox_event', 'delivery_log') "
                          "ORDER BY 1").fetchall() == [("delivery_log", "p"), ("outbox_event", "p")]
        assert log_columns(db) == ENUM_COLUMNS and log_checks(db) == []  # the legacy partition's too
        assert [db.execute(f"SELECT {', '.join(before_columns[t])} FROM {t} ORDER BY 1, 2").fetchall()
                for t in tables] == snapshot
        for t in tables:  # columns added since (the trace context) are empty for the old rows
            for column in set(table_columns(db, t)) - set(before_columns[t]):
                assert db.execute(f"SELECT count({column}) FROM {t}").fetchone() == (0,), (t, column)
        legacy = {p.name: p for p in partitions.list_partitions(db) if "legacy" in p.name}
        assert {(p.table, p.low, p.high, p.guarded) for p in legacy.values()} == {
            (t, None, today() + DAY, True) for t in partitions.TABLES}
        assert projection.diff(db) == []
        last_seq = max(row[0] for row in snapshot[1])
        finish(db, open_event, still_open)
        assert db.execute("SELECT seq FROM delivery_log WHERE kind = 'attempt_finished' AND delivery_id = %s",
                          [still_open]).fetchone()[0] > last_seq
        for table in partitions.TABLES:
            for statement in ("UPDATE {} SET org_id = 'x'", "DELETE FROM {}", "TRUNCATE {}"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege, match=f"{table} is append-only"):
                    db.execute(sql.SQL(statement).format(sql.Identifier(f"{table}_legacy")))
        before = partitions.list_partitions(db)
        assert schema.migrate(db) == []
        assert partitions.list_partitions(db) == before

        report = partitions.retain(db, timedelta(days=30), now=now + 40 * DAY)
        assert set(legacy) <= actions(report, "dropped")
        assert count(db, "outbox_event") == 0


def test_two_retention_runs_at_once_drop_each_partition_once(dsn: str, db: psycopg.Connection) -> None:
    """Two pods running retention together drop every old partition exactly once, and neither fails."""
    old = old_partitions(db)
    delivery(db, old_day() + 12 * timedelta(hours=1), finished_at=old_day() + 13 * timedelta(hours=1))
    reports: list[partitions.RetentionReport] = []
    start = threading.Barrier(2)

    def run() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            start.wait()
            reports.append(partitions.retain(conn, timedelta(days=30)))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(reports) == 2
    dropped = [d.name for r in reports for d in r.decisions if d.action == "dropped"]
    assert sorted(dropped) == sorted(old)
    assert [d for r in reports for d in r.decisions if d.action == "skipped"] == []


def test_periodic_maintenance_creates_upcoming_days_and_skips_while_another_pod_holds_the_lock(dsn: str) -> None:
    """A deliverer that finds the lock taken skips its turn; the next turn creates the missing days once."""
    settings = settings_for(dsn)
    later = datetime.now(UTC) + 3 * DAY
    with psycopg.connect(dsn) as holder:
        holder.execute(QUERIES["lock_migrations"])
        assert partitions.maintain_once(settings, later) is None
    created = partitions.maintain_once(settings, later)
    assert created is not None and len(created) == 6
    assert partitions.maintain_once(settings, later) == []


async def test_a_delivery_whose_event_was_dropped_cannot_be_replayed(dsn: str, db: psycopg.Connection) -> None:
    """Facts that outlive their event's partition do not let a replay queue a delivery no worker could send."""
    old_partitions(db)
    _, delivery_id = delivery(db, old_day() + 12 * timedelta(hours=1), finished_at=datetime.now(UTC),
                              outcome="failed")
    partitions.retain(db, timedelta(days=30))
    state = db.execute("SELECT state FROM delivery_state WHERE delivery_id = %s", [delivery_id]).fetchone()
    assert state == ("failed",)  # its last fact is recent, and kept
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        assert await replay.replay(conn, [delivery_id], org_id=None, actor="test") == []
    assert count(db, "delivery_queue") == 0
