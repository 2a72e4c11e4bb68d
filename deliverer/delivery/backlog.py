"""The due-backlog gauges: deliveries due now and the age of the oldest.

They describe the whole queue, not one pod, so every pod reports the same
numbers and dashboards aggregate them with max(). Counting stops at a cap so a
backlog of millions costs a bounded index scan every few seconds.
"""

import asyncio
import contextlib
from typing import Any

import psycopg
import structlog

from deliverer.delivery.connection import Reopening
from deliverer.delivery.queries import QUERIES
from deliverer.ops.metrics import METRICS
from deliverer.settings import Settings

log = structlog.get_logger("deliverer.backlog")
COUNT_CAP = 100_000


async def measure(conn: psycopg.AsyncConnection[Any]) -> tuple[int, float]:
    row = await (await conn.execute(QUERIES["due_backlog"], {"cap": COUNT_CAP})).fetchone()
    assert row is not None
    due, oldest_age = int(row[0]), float(row[1])
    METRICS.deliveries_due.set(due)
    METRICS.oldest_due_age.set(oldest_age)
    return due, oldest_age


async def watch(settings: Settings, interval: float = 5.0) -> None:
    """Refresh the gauges every ``interval`` seconds until cancelled, through database outages."""
    db = Reopening(settings, "deliverer backlog")
    try:
        while True:
            try:
                await measure(await db.get())
            except psycopg.Error as exc:
                METRICS.db_errors.labels("backlog").inc()
                log.warning("could not measure the backlog", error=str(exc).strip())
                await db.close()
            await asyncio.sleep(interval)
    finally:
        with contextlib.suppress(psycopg.Error):
            await db.close()
