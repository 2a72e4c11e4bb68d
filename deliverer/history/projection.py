"""The delivery_queue projection and its rebuild from the append-only log.

delivery_queue is derived state: the non-terminal rows of the delivery_state
view, which folds delivery_log. Rebuilding replaces it, in one transaction, by
what the log says; ``diff`` lists any row where the two disagree.
"""

import uuid
from datetime import datetime
from typing import Literal, NamedTuple

import psycopg
from psycopg.rows import class_row

from deliverer.history.queries import QUERIES
from deliverer.ops.progress import Progress, quiet

RANGES = 16
"""The rebuild refills the queue a sixteenth of the delivery ids at a time, so it can say how far it is:
delivery ids are random (gen_random_uuid), so each range holds about as many deliveries."""


class Difference(NamedTuple):
    """A delivery_queue row found on one side only: in the live queue or in the log's fold."""

    side: Literal["only_live", "only_log"]
    delivery_id: uuid.UUID
    event_id: uuid.UUID
    endpoint_id: str
    org_id: str
    series: int
    attempt: int
    due_at: datetime | None
    leased_by: str | None


def diff(conn: psycopg.Connection) -> list[Difference]:
    """Rows present only in the live queue ('only_live') or only in the log's fold ('only_log')."""
    return conn.cursor(row_factory=class_row(Difference)).execute(QUERIES["diff_delivery_queue"]).fetchall()


def _id_range(i: int) -> tuple[uuid.UUID, uuid.UUID]:
    width = (1 << 128) // RANGES
    return uuid.UUID(int=i * width), uuid.UUID(int=(i + 1) * width - 1)


def rebuild(conn: psycopg.Connection, progress: Progress = quiet) -> int:
    """Drop the queue's rows and recompute them from the log; returns the number of open deliveries.

    TRUNCATE takes an exclusive lock, so running workers wait for the rebuild
    instead of claiming from a half-built queue; every range is refilled in that
    same transaction.
    """
    restored = 0
    with conn.transaction():
        conn.execute(QUERIES["truncate_delivery_queue"])
        progress("rebuilding delivery_queue", 0, RANGES)
        for i in range(RANGES):
            low, high = _id_range(i)
            restored += conn.execute(QUERIES["rebuild_delivery_queue"], {"low": low, "high": high}).rowcount
            progress("rebuilding delivery_queue", i + 1, RANGES)
    return restored
