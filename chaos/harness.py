"""What every scenario needs: endpoints, publishing, waiting for the queue to drain, and closing the report."""

import asyncio
import time

import psycopg

import outbox
from chaos import integrity
from chaos.queries import QUERIES
from chaos.report import Report
from deliverer.dev.receiver import Received
from deliverer.dev.waiting import aeventually
from deliverer.registry import endpoints


def message(n: int = 0) -> dict[str, str]:
    """The customer docs' webhook.test payload."""
    return {"message": f"This is a test webhook event #{n}", "timestamp": "2024-11-23T10:00:00Z"}


def add_endpoint(dsn: str, url: str, org_id: str) -> str:
    """An endpoint for the suite's webhook.test events only: announcements of other endpoints
    being disabled (410) must not land in the counts."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return endpoints.add(conn, org_id=org_id, url=url, event_types=["webhook.test"], allow_insecure=True).id


async def publish(dsn: str, count: int, org_id: str, *, batch: int = 500, pause: float = 0.0) -> list[str]:
    """Publish ``count`` webhook.test events, ``batch`` per transaction; returns the committed ids."""
    published: list[str] = []
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        for start in range(0, count, batch):
            ids = await outbox.apublish_many(conn, [outbox.Event("webhook.test", message(start + i), org_id)
                                                    for i in range(min(batch, count - start))])
            await conn.commit()
            published += ids
            if pause:
                await asyncio.sleep(pause)  # the producer's pace, part of the load this scenario makes
    return published


async def open_deliveries(dsn: str) -> int:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        row = await (await conn.execute(QUERIES["open_deliveries"])).fetchone()
    assert row is not None
    return int(row[0])


async def until_drained(dsn: str, timeout: float) -> None:
    """Wait until no delivery is open: every one is delivered or failed."""
    still_open = -1

    async def drained() -> bool:
        nonlocal still_open
        still_open = await open_deliveries(dsn)
        return still_open == 0
    await aeventually(drained, lambda: f"every delivery to be delivered or failed ({still_open} still open)",
                      timeout=timeout, interval=0.2)


def finish(report: Report, dsn: str, receipts: list[Received], interrupted: set[str], started: float) -> Report:
    """Explain duplicates, check the log, and turn every mismatch into a problem."""
    report.duplicates, report.explained, problems = integrity.attempt_problems(dsn, receipts, interrupted)
    report.problems += problems
    report.problems += integrity.log_problems(dsn)
    report.close()
    report.wall_s = time.monotonic() - started
    return report
