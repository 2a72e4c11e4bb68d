"""Retention: daily partitions created ahead, old ones dropped whole, never what an open delivery needs."""

import asyncio
import contextlib
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from prometheus_client import REGISTRY
from psycopg import sql

import outbox
from deliverer.cli.commands import build_parser, cmd_retention
from deliverer.history import projection, replay
from deliverer.storage import partitions, schema
from deliverer.storage.queries import QUERIES
from outbox.ids import new_event_uuid
from tests.support import count, settings_for, webhook_test
from tests.support import database as testdb
from tests.support.deploy import OVERLAYS, find, needs_kubectl, render
from tests.support.processes import WorkerProcess, deliverer
from tests.support.schema import ENUM_COLUMNS, SCHEMA_BEFORE_PARTITIONING, log_checks, log_columns

DAY = timedelta(days=1)

LOG = """INSERT INTO delivery_log (recorded_at, kind, delivery_id, event_id, endpoint_id, org_id, series, attempt,
                                  outcome, next_attempt_at)
         VALUES (%(at)s, %(kind)s, %(delivery_id)s, %(event_id)s, 'ep_a', 'org_a', 1, %(attempt)s,
                 %(outcome)s, %(next)s)"""


def today() -> datetime:
    return partitions.floor(datetime.now(UTC))


def old_day() -> datetime:
    """Midnight 40 days ago: well past a 30-day cutoff."""
    return today() - 40 * DAY


def name(table: str, day: datetime) -> str:
    return f"{table}_p{day:%Y%m%d}"


def names(db: psycopg.Connection) -> set[str]:
    return {p.name for p in partitions.list_partitions(db)}


def old_partitions(db: psycopg.Connection) -> set[str]:
    """Create the partitions of the three days around old_day(), as maintenance did back then."""
    created = partitions.ensure(db, old_day() + 12 * timedelta(hours=1), days_ahead=1)
    return {d.name for d in created}


def delivery(db: psycopg.Connection, at: datetime, *, finished_at: datetime | None = None,
             outcome: str = "succeeded") -> tuple[uuid.UUID, uuid.UUID]:
    """An event created at ``at`` and its delivery: finished at ``finished_at``, or still open (in the queue)."""
    event_id = new_event_uuid(now_ms=int(at.timestamp() * 1000))
    delivery_id = uuid.uuid4()
    db.execute("INSERT INTO outbox_event (id, org_id, event_type, body, created_at) "
               "VALUES (%s, 'org_a', 'webhook.test', '{}', %s)", [event_id, at])
    fact = {"delivery_id": delivery_id, "event_id": event_id}
    db.execute(LOG, fact | {"at": at, "kind": "scheduled", "attempt": 0, "outcome": None, "next": at})
    if finished_at is None:
        db.execute("INSERT INTO delivery_queue (delivery_id, event_id, endpoint_id, org_id, series, attempt, due_at) "
                   "VALUES (%s, %s, 'ep_a', 'org_a', 1, 0, %s)", [delivery_id, event_id, at])
    else:
        db.execute(LOG, fact | {"at": finished_at, "kind": "attempt_finished", "attempt": 1, "outcome": outcome,
                                "next": None})
    return event_id, delivery_id


def finish(db: psycopg.Connection, event_id: uuid.UUID, delivery_id: uuid.UUID) -> None:
    """The open delivery succeeds now: its queue row goes, as the worker's record_results does."""
    db.execute("DELETE FROM delivery_queue WHERE delivery_id = %s", [delivery_id])
    db.execute(LOG, {"at": datetime.now(UTC), "kind": "attempt_finished", "delivery_id": delivery_id,
                     "event_id": event_id, "attempt": 1, "outcome": "succeeded", "next": None})


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


def test_uncovered_fills_the_gaps_between_existing_partitions() -> None:
    """Ranges an existing partition covers (a legacy one from MINVALUE too) are skipped; gaps split at day bounds."""
    day = datetime(2025, 1, 1, tzinfo=UTC)
    existing = [(None, day + timedelta(days=1, hours=12)), (day + 3 * DAY, day + 4 * DAY)]
    assert partitions.uncovered(existing, day, day + 6 * DAY) == [
        (day + timedelta(days=1, hours=12), day + 2 * DAY), (day + 2 * DAY, day + 3 * DAY),
        (day + 4 * DAY, day + 5 * DAY), (day + 5 * DAY, day + 6 * DAY)]
    assert partitions.partition_name("outbox_event", day + timedelta(days=1, hours=12)) == "outbox_event_p20250102_1200"


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
        (f"{t}_default", "holds 1 row no other partition covers; see README, Retention") for t in partitions.TABLES}
    assert (count(db, "outbox_event"), count(db, "delivery_log")) == (1, 1)


@pytest.fixture
def unpartitioned(pg_server: str) -> Iterator[str]:
    """A database created by schema.sql as it was before partitioning."""
    with testdb.empty_database(pg_server, "outbox_upgrade") as name:
        url = testdb.url_of(pg_server, name)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(SCHEMA_BEFORE_PARTITIONING.read_text())
        yield url


def test_migrate_upgrades_an_unpartitioned_database_without_losing_a_row(unpartitioned: str) -> None:
    """The old tables become partitions up to tomorrow: same rows, same state, enum types, seq goes on, append-only."""
    with psycopg.connect(unpartitioned, autocommit=True) as db:
        now = datetime.now(UTC)
        delivery(db, old_day(), finished_at=old_day() + timedelta(minutes=1))
        open_event, still_open = delivery(db, now - timedelta(hours=1))
        with psycopg.connect(unpartitioned) as conn:
            outbox.publish(conn, "webhook.test", webhook_test(), org_id="org_b", dedupe_key="job_1")
            conn.commit()
        snapshot = [db.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall()
                    for t in ("outbox_event", "delivery_log", "delivery_state", "delivery_queue", "outbox_dedupe")]

        schema.migrate(db)

        assert db.execute("SELECT relname, relkind FROM pg_class WHERE relname IN ('outbox_event', 'delivery_log') "
                          "ORDER BY 1").fetchall() == [("delivery_log", "p"), ("outbox_event", "p")]
        assert log_columns(db) == ENUM_COLUMNS and log_checks(db) == []  # the legacy partition's too
        assert [db.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall()
                for t in ("outbox_event", "delivery_log", "delivery_state", "delivery_queue",
                          "outbox_dedupe")] == snapshot
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


async def test_periodic_maintenance_survives_an_unreachable_database() -> None:
    """Database errors are counted and retried on the next round; the task keeps running until cancelled."""
    settings = settings_for("postgresql://postgres@127.0.0.1:1/nowhere")

    def errors() -> float:
        return REGISTRY.get_sample_value("deliverer_db_errors_total", {"operation": "partitions"}) or 0

    before = errors()
    task = asyncio.create_task(partitions.maintain(settings, interval=0.05))
    for _ in range(200):
        await asyncio.sleep(0.05)
        if errors() >= before + 2:
            break
    assert not task.done()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert errors() >= before + 2


async def test_a_running_deliverer_creates_missing_partitions(dsn: str, db: psycopg.Connection,
                                                              tmp_path: Path) -> None:
    """`deliverer run` maintains partitions by itself: days missing ahead reappear shortly after it starts."""
    last = today() + partitions.DAYS_AHEAD * DAY
    schema.migrate(db)
    for table in partitions.TABLES:
        db.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name(table, last))))
    worker = WorkerProcess(dsn, "maintainer", tmp_path)
    await worker.start()
    try:
        await worker.wait_logged("partition created", times=2)
    finally:
        assert await worker.stop() == 0
    assert {name(t, last) for t in partitions.TABLES} <= names(db)


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


def test_cli_retention_prints_what_it_dropped_kept_and_skipped(dsn: str, db: psycopg.Connection) -> None:
    """The command prints one line per dropped or skipped partition and totals for the rest; exit status 0."""
    old = old_partitions(db)
    delivery(db, old_day() + 12 * timedelta(hours=1))
    dry = deliverer(dsn, "retention", "--older-than", "30d", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert names(db) >= old
    assert sum(line.startswith("would drop") for line in dry.stdout.splitlines()) == 4

    result = deliverer(dsn, "retention", "--older-than", "30d")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("cutoff ")
    assert sorted(line.split()[1] for line in lines if line.startswith("dropped")) == sorted(
        old - {name(t, old_day()) for t in partitions.TABLES})
    assert [line.split()[1] for line in lines if line.startswith("skipped")] == [
        name("delivery_log", old_day()), name("outbox_event", old_day())]
    assert f"{'kept':<12} {partitions.DAYS_AHEAD + 2} outbox_event partitions newer than the cutoff" in lines
    assert deliverer(dsn, "rebuild-projections", "--check").returncode == 0


@pytest.mark.parametrize("text", ["30", "thirty", "30 days", "1.5d", "-1d", "0d", "30s", "d", "", "36501d",
                                  "99999999999999m"])
def test_durations_that_are_not_a_count_of_days_hours_or_minutes_are_refused(text: str) -> None:
    """Anything but a positive whole number followed by d, h or m is an error that shows the expected form."""
    with pytest.raises(ValueError, match="expected a duration like 30d, 12h or 90m"):
        partitions.parse_duration(text)


def test_durations_in_days_hours_and_minutes() -> None:
    """30d, 12h and 90m mean what they say."""
    assert [partitions.parse_duration(t) for t in ("30d", "12h", "90m")] == [
        timedelta(days=30), timedelta(hours=12), timedelta(minutes=90)]


def test_cli_refuses_a_bad_or_too_short_cutoff_unless_forced(dsn: str) -> None:
    """A duration it cannot read, or under a day without --force, exits 2 with a message saying what to do."""
    bad = deliverer(None, "retention", "--older-than=30 days")
    assert bad.returncode == 2
    assert "--older-than: expected a duration like 30d, 12h or 90m" in bad.stderr
    short = deliverer(dsn, "retention", "--older-than", "12h")
    assert short.returncode == 2
    assert "less than a day" in short.stderr and "--force" in short.stderr
    forced = deliverer(dsn, "retention", "--older-than", "12h", "--force", "--dry-run")
    assert forced.returncode == 0, forced.stderr


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_cronjob_runs_retention_daily_with_a_cutoff_the_cli_accepts(overlay: str) -> None:
    """Every overlay has the retention CronJob; its arguments parse, without --force or --dry-run, and never overlap."""
    [cron] = find(render(overlay), "CronJob", "docextract-webhooks-retention")
    [container] = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    args = build_parser().parse_args(container["args"])
    assert args.func is cmd_retention and not args.force and not args.dry_run
    assert partitions.parse_duration(args.older_than) >= partitions.MIN_OLDER_THAN
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
