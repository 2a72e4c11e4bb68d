"""Long operations report how far they are (deliverer.ops.progress) and do the same work as before."""

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

import outbox
from deliverer.history import projection, replay
from deliverer.storage import partitions, schema
from tests.support import failed_deliveries, webhook_test


class Recorder:
    """A Progress that keeps every report."""

    def __init__(self) -> None:
        self.reports: list[tuple[str, int, int | None, str]] = []

    def __call__(self, step: str, done: int, total: int | None, detail: str = "") -> None:
        self.reports.append((step, done, total, detail))

    def of(self, step: str) -> list[tuple[int, int | None]]:
        return [(done, total) for s, done, total, _ in self.reports if s == step]

    def details(self, step: str) -> list[str]:
        return [detail for s, _, _, detail in self.reports if s == step]


async def test_recover_replays_in_batches_and_counts_them(dsn: str, db: psycopg.Connection,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Five failed deliveries in batches of two: three transactions, reported 0, 2, 4, 5 of 5; all replayed."""
    monkeypatch.setattr(replay, "BATCH", 2)
    endpoint_id, _ = await failed_deliveries(dsn, db, 5)
    progress = Recorder()
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        ids = await replay.recover(conn, endpoint_id, org_id=None, since=datetime.now(UTC) - timedelta(hours=1),
                                   until=datetime.now(UTC) + timedelta(seconds=1), actor="test", progress=progress)
    assert progress.of("replaying") == [(0, 5), (2, 5), (4, 5), (5, 5)]
    assert len(set(ids)) == 5
    states = db.execute("SELECT state, count(*) FROM delivery_state GROUP BY state").fetchall()
    assert states == [("pending", 5)]


async def test_rebuild_fills_every_range_and_counts_them(dsn: str, db: psycopg.Connection) -> None:
    """The rebuild goes through all sixteen id ranges and restores the queue as it was."""
    await failed_deliveries(dsn, db, 1)
    with psycopg.connect(dsn) as conn:
        outbox.publish_many(conn, [outbox.Event("webhook.test", webhook_test(), "org_a")] * 40)
        conn.commit()
    before = db.execute("SELECT * FROM delivery_queue ORDER BY delivery_id").fetchall()
    progress = Recorder()
    assert projection.rebuild(db, progress) == 40
    assert progress.of("rebuilding delivery_queue") == [(i, projection.RANGES) for i in range(projection.RANGES + 1)]
    assert db.execute("SELECT * FROM delivery_queue ORDER BY delivery_id").fetchall() == before


def test_retention_counts_partitions_and_pruned_keys(db: psycopg.Connection,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Every partition is counted once it is judged; pruned dedupe keys are counted batch by batch."""
    monkeypatch.setattr(partitions, "DEDUPE_BATCH", 3)
    db.execute("INSERT INTO outbox_dedupe (org_id, dedupe_key, event_id, created_at) "
               "SELECT 'org_a', 'old_' || i, gen_random_uuid(), now() - interval '31 days' "
               "FROM generate_series(1, 7) AS i")
    progress = Recorder()
    partitions.retain(db, timedelta(days=30), progress=progress)
    judged = progress.of("partitions")
    total = len(partitions.list_partitions(db))
    assert judged == [(i, total) for i in range(total + 1)]
    assert progress.of("outbox_dedupe keys") == [(3, 7), (6, 7), (7, 7)]


def test_migrate_counts_statements_then_partitions(empty_dsn: str) -> None:
    """A new database: each statement of schema.sql is counted with its label, then every partition created ahead."""
    statements = schema.statements(schema.schema_sql())
    progress = Recorder()
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        created = schema.migrate(conn, progress=progress)
    assert progress.of(schema.APPLYING) == [(i, len(statements)) for i in range(len(statements) + 1)]
    assert progress.details(schema.APPLYING) == [schema.label(s) for s in statements] + [""]
    assert progress.of(partitions.CREATING) == [(i, len(created)) for i in range(len(created) + 1)]
    assert len(created) == 2 * (partitions.DAYS_AHEAD + 2)  # yesterday through 14 days ahead, both tables
