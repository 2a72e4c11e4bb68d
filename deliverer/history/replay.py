"""Replaying deliveries: a new attempt series, recorded in the log with who asked.

A replay keeps the event id, so receivers that deduplicate on it recognise the
event. The original attempts stay in the log; the new series starts at attempt 1
and follows the same retry schedule.
"""

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from deliverer.history.queries import QUERIES
from deliverer.ops.progress import Progress, quiet

BATCH = 500
"""Deliveries a bulk replay reopens per transaction: each batch's locks are held only that long."""


@dataclass(frozen=True)
class Replayed:
    delivery_id: uuid.UUID
    series: int


async def replay(conn: psycopg.AsyncConnection[Any], delivery_ids: list[uuid.UUID], *, org_id: str | None,
                 actor: str, now: datetime | None = None) -> list[Replayed]:
    """Reopen each finished (delivered or failed) delivery; open ones are skipped, not changed.

    ``conn`` must be in autocommit mode: the replay takes its own transaction.
    """
    if not delivery_ids:
        return []
    async with conn.transaction():
        await conn.execute(QUERIES["lock_deliveries"], {"delivery_ids": delivery_ids})
        cur = await conn.execute(QUERIES["replay_deliveries"], {
            "delivery_ids": delivery_ids, "org_id": org_id, "actor": actor, "now": now,
        })
        # notified only makes the statement run its pg_notify
        return [Replayed(delivery_id, series) for delivery_id, series, _notified in await cur.fetchall()]


async def failed_deliveries(conn: psycopg.AsyncConnection[Any], endpoint_id: str, *, since: datetime,
                            until: datetime) -> list[uuid.UUID]:
    cur = await conn.execute(QUERIES["failed_deliveries_of_endpoint"], {
        "endpoint_id": endpoint_id, "since": since, "until": until,
    })
    return [delivery_id for (delivery_id,) in await cur.fetchall()]


async def recover(conn: psycopg.AsyncConnection[Any], endpoint_id: str, *, org_id: str | None, since: datetime,
                  until: datetime, actor: str, dry_run: bool = False, progress: Progress = quiet) -> list[uuid.UUID]:
    """Replay an endpoint's failed deliveries of events created in [since, until), ``BATCH`` a transaction:
    a recovery cut short has replayed whole batches, and running it again replays the rest.

    Returns the deliveries replayed, or with ``dry_run`` those that would be.
    """
    failed = await failed_deliveries(conn, endpoint_id, since=since, until=until)
    if dry_run:
        return failed
    replayed: list[uuid.UUID] = []
    progress("replaying", 0, len(failed))
    for start in range(0, len(failed), BATCH):
        done = await replay(conn, failed[start:start + BATCH], org_id=org_id, actor=actor)
        replayed += [r.delivery_id for r in done]
        progress("replaying", min(start + BATCH, len(failed)), len(failed))
    return replayed
