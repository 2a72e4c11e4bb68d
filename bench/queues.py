"""The other queues the deliverer is measured against, on the same server, sink, payload and signing.

- ``graphile-worker`` (npm, Node; bench/peers/graphile_worker.js),
- ``pgqueuer`` (PyPI, asyncpg; bench/pgqueuer_worker.py),
- ``floor``: a minimal lease-and-delete queue with no log (bench/floor_worker.py).

Each drains the same jobs as the deliverer's drain: the events of
bench.database.job_completed over its ORGS endpoints, each job carrying its
endpoint URL, a plain ``whsec_`` secret, an event id and the exact body the
deliverer sends. They are enqueued through each queue's own bulk API
(graphile-worker's ``add_jobs``, pgqueuer's ``Queries.enqueue``), then moved
to a staging table, and released while the workers wait: one ``INSERT …
SELECT`` back into the queue's table and the notification its own enqueue
sends, from the harness's connection, whose backend's CPU is not counted. This
is what bench.database.stage and release do for the deliverer, so the drain
starts the same way for everybody.

The throughput settings given to each are below, with why they are fair.
"""

import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from bench import database, machine
from bench.database import ORGS
from bench.deliverers import stop_processes
from bench.sink import SinkProcess
from deliverer.registry import endpoints
from outbox import sqlfile
from outbox.ids import delivery_public_id, event_public_id
from outbox.publish import serialize

QUERIES = sqlfile.load("bench", "queues.sql")
PEERS = Path(__file__).parent / "peers"

GRAPHILE_WORKER: dict[str, Any] = {
    "concurrentJobs": 100,
    "maxPoolSize": 12,
    "pollInterval": 1000,
    "preparedStatements": True,
    "localQueue": {"size": 500},
    "completeJobBatchDelay": 0,
    "failJobBatchDelay": 0,
}
"""graphile-worker's preset.worker. Its performance page's configuration (localQueue 500, batched
completion and failure with delay 0, prepared statements: the default) with concurrentJobs raised from
its 24, a figure for CPU-bound jobs, towards the deliverer's 200 sends in flight, since these jobs
wait on the network; see docs/performance.md for the counts tried. pollInterval 1 s is the
deliverer's poll interval (new jobs arrive by NOTIFY either way)."""

PGQUEUER: dict[str, Any] = {"batch_size": 100, "max_concurrent_tasks": 200, "dequeue_timeout_s": 1.0}
"""pgqueuer's QueueManager.run: the deliverer's batch (100) and sends in flight (200) per process, and
its poll interval as the longest wait between NOTIFYs; no per-entrypoint concurrency limit (its SQL
gate costs a count per dequeue, and the deliverer's default has none across processes either)."""

FLOOR: dict[str, Any] = {"batch": 100, "max_in_flight": 200, "poll_interval_s": 1.0, "lease_s": 30}
"""bench/floor_worker.py's constants: the deliverer's defaults."""


def jobs(sink: SinkProcess, count: int, orgs: int = ORGS) -> list[dict[str, Any]]:
    """The drain's events as self-contained jobs: event i to endpoint /hook/<i % orgs>, signed with its secret."""
    keys = [endpoints.new_secret() for _ in range(orgs)]
    out = []
    for i in range(count):
        event = database.job_completed(i, orgs)
        out.append({"url": sink.url(f"/hook/{i % orgs}"), "secret": keys[i % orgs],
                    "event_id": event_public_id(uuid.uuid4()), "event_type": event.event_type,
                    "delivery_id": delivery_public_id(uuid.uuid4()), "body": serialize(event.event_type, event.data)})
    return out


@dataclass
class Queue:
    """One queue: how to install it, enqueue jobs in bulk, run N workers and see what is left."""

    name: str
    table: str  # schema-qualified; a job's row is deleted once it is done
    settings: dict[str, Any]
    application_name: str = field(init=False)

    def __post_init__(self) -> None:
        self.application_name = f"bench {self.name}"

    def available(self) -> str | None:
        """Why this queue cannot run here, or None."""
        return None

    async def install(self, dsn: str) -> None:
        raise NotImplementedError

    async def enqueue(self, dsn: str, jobs: list[dict[str, Any]]) -> None:
        raise NotImplementedError

    def command(self, dsn: str) -> list[str]:
        raise NotImplementedError

    def notify(self, conn: psycopg.Connection[Any], count: int) -> None:
        """What the queue's own enqueue sends when ``count`` jobs arrive (nothing: a trigger does it)."""

    def url(self, dsn: str) -> str:
        return database.url(dsn, application_name=self.application_name)

    async def prepare(self, dsn: str, jobs: list[dict[str, Any]]) -> None:
        """Install, enqueue ``jobs``, and hold them back in bench_staged_jobs until :meth:`release`."""
        await self.install(dsn)
        await self.enqueue(dsn, jobs)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(self._sql("stage_jobs", conn))
            conn.execute(self._sql("vacuum_jobs", conn))

    def release(self, conn: psycopg.Connection[Any], count: int) -> None:
        with conn.transaction():
            conn.execute(self._sql("release_jobs", conn))
            self.notify(conn, count)

    def left(self, conn: psycopg.Connection[Any]) -> int:
        row = conn.execute(self._sql("jobs_left", conn)).fetchone()
        assert row is not None
        return int(row[0])

    def _sql(self, name: str, conn: psycopg.Connection[Any]) -> sql.Composed:
        schema, _, table = self.table.rpartition(".")
        row = conn.execute(QUERIES["staging_columns"], {"schema": schema or "public", "table": table}).fetchone()
        assert row is not None and row[0], f"no table {self.table}"
        return sql.SQL(QUERIES[name]).format(table=sql.Identifier(*self.table.split(".")),  # type: ignore[arg-type]
                                             columns=sql.SQL(row[0]))


class GraphileWorker(Queue):
    def __init__(self) -> None:
        super().__init__("graphile-worker", "graphile_worker._private_jobs", GRAPHILE_WORKER)

    def available(self) -> str | None:
        if shutil.which("node") is None or shutil.which("npm") is None:
            return "node and npm are not installed"
        if not (PEERS / "node_modules" / "graphile-worker").exists():
            result = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=PEERS,
                                    capture_output=True, text=True, timeout=300)
            if result.returncode:
                return f"npm ci in bench/peers failed: {(result.stderr or result.stdout).strip()[-500:]}"
        return None

    async def install(self, dsn: str) -> None:
        process = await asyncio.create_subprocess_exec("node", str(PEERS / "graphile_worker.js"), "migrate",
                                                       self.url(dsn), stdin=asyncio.subprocess.DEVNULL)
        if await process.wait():
            raise RuntimeError("graphile-worker's migrations failed")

    async def enqueue(self, dsn: str, jobs: list[dict[str, Any]]) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(QUERIES["graphile_enqueue"], {"jobs": [json.dumps(job) for job in jobs]})

    def notify(self, conn: psycopg.Connection[Any], count: int) -> None:
        conn.execute("SELECT pg_notify('jobs:insert', %s)", (json.dumps({"count": count}),))  # as add_jobs does

    def command(self, dsn: str) -> list[str]:
        return ["node", str(PEERS / "graphile_worker.js"), "run", self.url(dsn), json.dumps(self.settings)]


class PgQueuer(Queue):
    def __init__(self) -> None:
        super().__init__("pgqueuer", "public.pgqueuer", PGQUEUER)

    async def install(self, dsn: str) -> None:
        await self._with_queries(dsn, lambda queries: queries.install())

    async def enqueue(self, dsn: str, jobs: list[dict[str, Any]]) -> None:
        payloads = [json.dumps(job).encode() for job in jobs]
        await self._with_queries(dsn, lambda queries: queries.enqueue(
            ["deliver"] * len(jobs), payloads, [0] * len(jobs)))

    async def _with_queries(self, dsn: str, call: Any) -> None:
        import asyncpg
        from pgqueuer import AsyncpgDriver, Queries

        conn = await asyncpg.connect(database.url(dsn))
        try:
            await call(Queries(AsyncpgDriver(conn)))
        finally:
            await conn.close()

    def command(self, dsn: str) -> list[str]:
        return [sys.executable, "-m", "bench.pgqueuer_worker", self.url(dsn), json.dumps(self.settings)]


class Floor(Queue):
    def __init__(self) -> None:
        super().__init__("floor", "public.bench_floor_job", FLOOR)

    async def install(self, dsn: str) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(QUERIES["floor_create"])

    async def enqueue(self, dsn: str, jobs: list[dict[str, Any]]) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(QUERIES["floor_enqueue"], {"jobs": [json.dumps(job) for job in jobs]})

    def notify(self, conn: psycopg.Connection[Any], count: int) -> None:
        conn.execute("NOTIFY bench_floor")

    def command(self, dsn: str) -> list[str]:
        return [sys.executable, "-m", "bench.floor_worker", self.url(dsn)]


QUEUES = {"graphile-worker": GraphileWorker, "pgqueuer": PgQueuer, "floor": Floor}


class Workers:
    """``count`` worker processes of a queue; ``async with`` starts them and waits until each printed ``ready``."""

    def __init__(self, queue: Queue, dsn: str, count: int) -> None:
        self.queue, self.dsn, self.count = queue, dsn, count
        self.processes: list[asyncio.subprocess.Process] = []
        self.log = Path(tempfile.mkstemp(prefix=f"bench-{queue.name}-", suffix=".log")[1])

    def cpu(self) -> float:
        return sum(machine.process_cpu(p.pid) for p in self.processes)

    def backends(self, conn: psycopg.Connection[Any]) -> list[int]:
        return [row[0] for row in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = %s",
            (self.queue.application_name,))]

    async def __aenter__(self) -> "Workers":
        with self.log.open("ab") as log:
            for _ in range(self.count):
                self.processes.append(await asyncio.create_subprocess_exec(
                    *self.queue.command(self.dsn), stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE, stderr=log))
        for process in self.processes:
            assert process.stdout is not None
            try:
                line = await asyncio.wait_for(process.stdout.readline(), 60)
            except TimeoutError:
                line = b""
            if line.strip() != b"ready":
                await self.stop()
                raise RuntimeError(f"{self.queue.name} workers did not start; their log ({self.log}):\n{self.tail()}")
        await asyncio.sleep(0.3)  # their first (empty) fetch
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        await self.stop()
        if exc_type is None:
            self.log.unlink(missing_ok=True)

    async def stop(self) -> None:
        await stop_processes(self.processes, grace=15)

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


async def measure_drain(sink: SinkProcess, queue: Queue, dsn: str, processes: int, expected: int, *,
                        timeout: float = 300) -> dict[str, Any]:
    """Start ``processes`` workers, release the staged jobs, and measure until every job is done.

    As bench.scenarios.measure_drain does for the deliverer: the rate is between the first
    and the last receipt at the sink; CPU is read at the release and once the queue's
    table is empty (every completion written), without the harness's own backend.
    """
    with psycopg.connect(dsn, autocommit=True) as conn:
        transactions_before = database.fetch_one(conn, "transactions")
    async with Workers(queue, dsn, processes) as workers:
        with psycopg.connect(dsn, autocommit=True) as conn:
            backends, own_pid = workers.backends(conn), conn.info.backend_pid
            await sink.reset()
            own_before = machine.process_cpu(own_pid)
            pg_before = machine.postgres_cpu()
            workers_before, sink_before = workers.cpu(), machine.process_cpu(sink.pid)
            released = time.monotonic()
            queue.release(conn, expected)
            received = await sink.wait_for(expected, timeout)
            if received < expected:
                raise RuntimeError(f"only {received} of {expected} {queue.name} jobs reached the sink in {timeout} s; "
                                   f"worker log:\n{workers.tail()}")
            deadline = time.monotonic() + 60
            while queue.left(conn) and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            done = time.monotonic()
            pg_after = machine.postgres_cpu()
            backends = sorted(set(backends) | set(workers.backends(conn)))  # pools open connections on demand
            workers_cpu = workers.cpu() - workers_before
            by_kind = machine.cpu_delta_by_kind(pg_before, pg_after)
            sink_cpu = machine.process_cpu(sink.pid) - sink_before
            own_cpu = machine.process_cpu(own_pid) - own_before
            left = queue.left(conn)
        records = await sink.dump()
        rss = [machine.peak_rss_mib(p.pid) for p in workers.processes]
    with psycopg.connect(dsn, autocommit=True) as conn:
        transactions = database.fetch_one(conn, "transactions") - transactions_before
    keys = Counter(event_id for _, event_id, _ in records)
    times = sorted(t for _, _, t in records)
    per_1000 = 1e6 / expected
    return {
        "processes": processes,
        "deliveries": expected,
        "deliveries_per_s": (len(times) - 1) / (times[-1] - times[0]),
        "first_receipt_after_release_ms": (times[0] - released) * 1000,
        "release_to_recorded_s": done - released,
        "worker_cpu_ms_per_1000": workers_cpu * per_1000,
        "postgres_cpu_ms_per_1000": (machine.cpu_delta(pg_before, pg_after) - own_cpu) * per_1000,
        # Where PostgreSQL's CPU went: backends (less this harness's), WAL writer, autovacuum, I/O workers…
        "postgres_cpu_by_kind_ms_per_1000": {
            kind: (cpu - (own_cpu if kind == "backend" else 0)) * per_1000 for kind, cpu in sorted(by_kind.items())},
        "postgres_worker_backends_cpu_ms_per_1000": sum(
            pg_after[p] - pg_before.get(p, 0.0) for p in backends if p in pg_after) * per_1000,
        "sink_cpu_ms_per_1000": sink_cpu * per_1000,
        "transactions_per_1000": transactions * 1000 / expected,
        "duplicates": sum(n - 1 for n in keys.values()),
        "lost": expected - len(keys),
        "not_completed": left,
        "peak_rss_mib": max(rss, default=0.0),
    }
