"""Scenario 2: the database goes away under running workers, twice over.

``terminate``: every deliverer connection is killed with pg_terminate_backend,
round after round. ``restart``: the PostgreSQL server itself is stopped and
started again (always an embedded server of the suite's own). Either way the
worker processes stay up, log that they are not ready until a claim succeeds
again, and lose nothing; a producer that publishes meanwhile gets a
psycopg.OperationalError at once instead of hanging.
"""

import asyncio
import time
from pathlib import Path

import psycopg

import outbox
from chaos import harness
from chaos.embedded_postgres import EmbeddedPostgres, create_database
from chaos.queries import QUERIES
from chaos.report import Report
from chaos.workers import WorkerProcess
from deliverer.dev.receiver import Receiver
from outbox.ids import event_public_id, parse_event_id

# The outage must be shorter than the lease, or sends finished during it could be retried.
WORKER_ENV = {"DELIVERER_HTTP_TIMEOUT": "5", "DELIVERER_LEASE_SECONDS": "15", "DELIVERER_POLL_INTERVAL": "0.2"}
PRODUCER_CONNECT_TIMEOUT = 3


class _Run:
    """Two workers, one sink, a producer that keeps publishing through the outage."""

    def __init__(self, dsn: str, workdir: Path, report: Report, events: int, tag: str) -> None:
        self.dsn, self.workdir, self.report, self.events, self.tag = dsn, workdir, report, events, tag
        self.sink = Receiver(keep_content=False)
        self.paths = [f"/{tag}/a", f"/{tag}/b"]
        self.workers = [WorkerProcess(dsn, f"{tag}-w{i}", workdir, **WORKER_ENV) for i in range(2)]
        self.published: list[str] = []
        self.uncertain: list[str] = []  # in batches whose COMMIT got no answer: committed or not, the log says
        self.producer_errors: list[str] = []

    async def start(self) -> None:
        await self.sink.start()
        for path in self.paths:
            harness.add_endpoint(self.dsn, self.sink.url(path), f"org_{self.tag}")
        for worker in self.workers:
            await worker.start()
        for worker in self.workers:
            await worker.wait_logged("worker ready")

    async def produce(self, stop: asyncio.Event) -> None:
        """Publish small batches until ``stop``, reconnecting after errors like an application would."""
        n = 0
        while not stop.is_set() and len(self.published) < self.events:
            try:
                async with await psycopg.AsyncConnection.connect(
                        self.dsn, connect_timeout=PRODUCER_CONNECT_TIMEOUT) as conn:
                    while not stop.is_set() and len(self.published) < self.events:
                        published = await self.publish_batch(conn, n)
                        if published is None:
                            break  # a new connection
                        n += published
            except psycopg.OperationalError as exc:
                self.producer_errors.append(f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}")
                await asyncio.sleep(0.2)  # an application's pause before reconnecting, part of the load

    async def publish_batch(self, conn: psycopg.AsyncConnection, n: int) -> int | None:
        """Publish and commit 50 events; how many (None: go on with a new connection)."""
        ids = await outbox.apublish_many(
            conn, [outbox.Event("webhook.test", harness.message(n + i), f"org_{self.tag}") for i in range(50)])
        try:
            await conn.commit()
        except psycopg.OperationalError:
            # The server may have committed before it went down and the answer was lost.
            self.uncertain += ids
            raise
        self.published += ids
        await asyncio.sleep(0.02)  # the producer's pace: events keep coming through the outage
        return len(ids)

    def arrived(self) -> int:
        return len(self.sink.delivered())

    async def finish(self, started: float) -> Report:
        report = self.report
        # A batch whose COMMIT got no answer is published if the database has it (an event
        # exists if and only if its transaction committed), and then it must be delivered.
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            survived = [event_public_id(e) for (e,) in conn.execute(
                QUERIES["events_found"], {"ids": [parse_event_id(e) for e in self.uncertain]})]
        self.published += survived
        if self.uncertain:
            report.notes.append(f"{len(self.uncertain)} events in batches whose COMMIT got no answer, "
                                f"{len(survived)} of them committed")
        report.published = len(self.published)
        report.expected = {(e, p) for e in self.published for p in self.paths}
        for worker in self.workers:
            report.check(worker.running, f"{worker.name} exited during the outage:\n{worker.log()[-2000:]}")
        await harness.until_drained(self.dsn, timeout=90)
        await self.sink.wait_until(lambda: self.sink.delivered() >= report.expected, "every delivery",
                                  timeout=30)
        codes = [await w.stop() for w in self.workers]
        await self.sink.stop()
        report.check(codes == [0, 0], f"workers exited with {codes}")
        for worker in self.workers:
            down, up = worker.logged("worker not ready"), worker.logged("worker ready")
            report.check(down >= 1, f"{worker.name} never reported not-ready")
            report.check(up == down + 1, f"{worker.name} ended not ready ({up} ready, {down} not ready)")
            report.notes.append(f"{worker.name}: not ready {down} times, ready again each time")
        report.delivered = self.sink.delivered()
        return harness.finish(report, self.dsn, self.sink.answered(), set(), started)


async def run_terminate(dsn: str, workdir: Path, *, events: int = 6000, rounds: int = 5) -> Report:
    """Kill every deliverer connection ``rounds`` times while events flow."""
    started = time.monotonic()
    report = Report("2a database: pg_terminate_backend", fault_kind="connection kills")
    run = _Run(dsn, workdir, report, events, "terminate")
    await run.start()
    stop = asyncio.Event()
    producer = asyncio.create_task(run.produce(stop))
    try:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as admin:
            for i in range(1, rounds + 1):
                target = 2 * events * i // (rounds + 2)

                def reached(target: int = target) -> bool:
                    return run.arrived() >= target
                await run.sink.wait_until(reached, f"round {i} of deliveries", timeout=120)
                row = await (await admin.execute(QUERIES["deliverer_backends"])).fetchone()
                report.faults += row[0] if row else 0
        await producer
    finally:
        stop.set()
        await producer
    return await run.finish(started)


async def run_restart(workdir: Path, *, events: int = 4000, down_seconds: float = 3.0, crash: bool = False) -> Report:
    """Stop the PostgreSQL server mid-run, keep it down ``down_seconds``, start it again.

    ``crash``: stop it the way a crash would (immediate shutdown, then crash
    recovery). Claims commit without waiting for the WAL flush, so the last
    ones may be lost: their deliveries are sent again, and the first sends'
    outcomes are logged as late results.
    """
    started = time.monotonic()
    report = (Report("2c database: server crash", fault_kind="server crash") if crash
              else Report("2b database: server stop/start", fault_kind="server restart"))
    with EmbeddedPostgres() as pg:
        dsn = create_database(pg.uri)
        run = _Run(dsn, workdir, report, events, "restart")
        await run.start()
        stop = asyncio.Event()
        producer = asyncio.create_task(run.produce(stop))
        try:
            await run.sink.wait_until(lambda: run.arrived() >= events // 2, "half the deliveries", timeout=120)
            await asyncio.to_thread(pg.crash if crash else pg.stop)
            report.faults += 1
            for worker in run.workers:
                await worker.wait_logged("worker not ready")
            # A producer during the outage: a clear error, at once.
            try:
                async with await psycopg.AsyncConnection.connect(dsn, connect_timeout=PRODUCER_CONNECT_TIMEOUT) as c:
                    await outbox.apublish(c, "webhook.test", harness.message(), org_id="org_restart")
                    await c.commit()
                report.problems.append("publishing succeeded while the server was down")
            except psycopg.OperationalError as exc:
                run.producer_errors.append(f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}")
            await asyncio.sleep(down_seconds)  # how long the outage lasts: part of the fault, not a wait for it
            await asyncio.to_thread(pg.start)
            for worker in run.workers:
                await worker.wait_logged("worker ready", times=2)
            await producer
        finally:
            stop.set()
            await producer
        report.check(bool(run.producer_errors), "the producer never saw the outage")
        report.notes.append(f"producer errors: {sorted(set(run.producer_errors))}")
        return await run.finish(started)
