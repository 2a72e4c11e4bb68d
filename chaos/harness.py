"""What every scenario needs: endpoints, publishing, waiting on the queue, and closing the report."""

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import psycopg

import outbox
from chaos import integrity
from chaos.queries import QUERIES
from chaos.receivers import Receipt
from chaos.report import Report
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
                await asyncio.sleep(pause)
    return published


async def open_deliveries(dsn: str) -> int:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        row = await (await conn.execute(QUERIES["open_deliveries"])).fetchone()
    assert row is not None
    return int(row[0])


async def until(predicate: Callable[[], bool], timeout: float, what: str, step: float = 0.1) -> None:
    """Wait for a condition; the timeout only keeps a broken run from hanging."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(step)


async def until_drained(dsn: str, timeout: float) -> None:
    """Wait until no delivery is open: every one is delivered or failed."""
    deadline = time.monotonic() + timeout
    while await open_deliveries(dsn):
        if time.monotonic() > deadline:
            raise AssertionError(f"deliveries still open after {timeout:g} s")
        await asyncio.sleep(0.2)


def finish(report: Report, dsn: str, receipts: list[Receipt], interrupted: set[str], started: float) -> Report:
    """Explain duplicates, check the log, and turn every mismatch into a problem."""
    report.duplicates, report.explained, problems = integrity.attempt_problems(dsn, receipts, interrupted)
    report.problems += problems
    report.problems += integrity.log_problems(dsn)
    report.close()
    report.wall_s = time.monotonic() - started
    return report


class Clock:
    """A clock moved by hand, passed to Worker(clock=...) so schedules run without sleeping."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC) + timedelta(seconds=1)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
