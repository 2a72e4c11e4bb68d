"""Scenario 8: the database stops accepting writes under running workers and producers, then accepts them again.

The database is switched to ``default_transaction_read_only`` (what a server set
read-only, or a standby answering in place of the primary, looks like) and its
sessions are dropped, as a failover or an operator's switch would. Producers get
``outbox.WritesRefused`` at once, before anything is sent, with their transaction
still usable; the workers' claims and outcome writes fail, so they report not
ready and back off. Writes are then allowed again *without* touching a session:
each worker finds out by itself (its read-only sessions fail, are closed and are
opened again) and the run ends with nothing lost.
"""

import asyncio
import time
from pathlib import Path

import psycopg

import outbox
from chaos.database_outage import _Run
from chaos.report import Report

READ_ONLY = "ALTER DATABASE {} SET default_transaction_read_only = on"
WRITABLE = "ALTER DATABASE {} RESET default_transaction_read_only"
DROP_SESSIONS = ("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                 "WHERE datname = current_database() AND pid <> pg_backend_pid()")


class _ReadOnlyRun(_Run):
    """A producer that also meets refused writes: it checks its transaction is usable, rolls back, goes on."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.refused: list[outbox.WritesRefused] = []
        self.unusable_after_refusal = 0
        # Half the events wait for the switch: a producer that had published everything
        # before it would never meet a refusal, and the scenario would prove nothing.
        self.switched = asyncio.Event()

    async def publish_batch(self, conn: psycopg.AsyncConnection, n: int) -> int | None:
        if len(self.published) >= self.events // 2:
            await self.switched.wait()
        try:
            return await super().publish_batch(conn, n)
        except outbox.WritesRefused as refused:
            self.refused.append(refused)
            if refused.transaction_usable:
                try:
                    await conn.execute("SELECT 1")  # the application's transaction goes on
                except psycopg.Error:
                    self.unusable_after_refusal += 1
            await conn.rollback()
            await asyncio.sleep(0.2)  # an application's pause before trying again
            # And, now and then, a new connection: it may reach a writable server.
            return None if len(self.refused) % 5 == 0 else 0


async def run(dsn: str, workdir: Path, *, events: int = 4000, read_only_seconds: float = 3.0) -> Report:
    """Switch the database read-only once half the deliveries arrived, for ``read_only_seconds``."""
    started = time.monotonic()
    report = Report("8 database: read-only", fault_kind="read-only switch")
    run = _ReadOnlyRun(dsn, workdir, report, events, "readonly")
    await run.start()
    stop = asyncio.Event()
    producer = asyncio.create_task(run.produce(stop))
    try:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as admin:
            name = psycopg.sql.Identifier(admin.info.dbname)
            await run.sink.wait_until(lambda: run.arrived() >= events // 2, "half the deliveries", timeout=120)
            await admin.execute(psycopg.sql.SQL(READ_ONLY).format(name))
            await admin.execute(DROP_SESSIONS)
            report.faults += 1
            switched = time.monotonic()
            run.switched.set()
            for worker in run.workers:
                await worker.wait_logged("worker not ready")
            not_ready_after = time.monotonic() - switched
            await run.sink.wait_until(lambda: bool(run.refused), "a producer refused", timeout=30)
            await asyncio.sleep(read_only_seconds)  # how long it lasts: part of the fault, not a wait for it
            await admin.execute(psycopg.sql.SQL(WRITABLE).format(name))  # no session touched
            allowed = time.monotonic()
            for worker in run.workers:
                await worker.wait_logged("worker ready", times=2, timeout=60)
            ready_after = time.monotonic() - allowed
        await producer
    finally:
        stop.set()
        await producer
    before = [r for r in run.refused if r.transaction_usable]
    report.check(bool(before), "no producer was refused before writing (the server's read-only report unused)")
    report.check(run.unusable_after_refusal == 0,
                 f"{run.unusable_after_refusal} producer transactions unusable after a refusal said usable")
    report.notes.append(f"workers not ready {not_ready_after:.1f} s after the switch, ready again "
                        f"{ready_after:.1f} s after writes were allowed, by themselves")
    report.notes.append(f"producer: {len(run.refused)} refusals ({len(before)} before writing, transaction usable); "
                        f"e.g. {str(run.refused[0]) if run.refused else '-'}")
    return await run.finish(started)
