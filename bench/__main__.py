"""Drain rate and publish-to-receipt latency of the deliverer, on this machine.

Everything runs here: a PostgreSQL (BENCH_DATABASE_URL or DATABASE_URL, else an
embedded one) with a fresh database, an aiohttp sink on loopback that answers
200 and notes when each event arrived, and real `deliverer run` processes.

1. drain: N events are queued first, then one deliverer process starts; the
   rate is measured from the first receipt to the last (process start-up left
   out), and CPU seconds are those of the deliverer process for the whole run.
2. latency: with an idle deliverer, one event per producer transaction;
   the time from COMMIT returning to the sink receiving the request.

The sink shares the machine with the database and the deliverer, so the figures
are for all three together. Medians over --repeat runs.
"""

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import secrets
import statistics
import sys
import time
from pathlib import Path

import psycopg
from aiohttp import web
from psycopg import sql
from psycopg.conninfo import make_conninfo

import outbox
from deliverer import devdb, endpoints, schema

RESULTS = Path(__file__).parent / "results"
PAYLOAD = {
    "id": "job_abc123", "org_id": "org_bench", "extractor_id": "ext_def456", "status": "completed",
    "extracted_data": {"invoice_number": "INV-2024-001", "total_amount": 1250.50, "invoice_date": "2024-11-15"},
    "confidence": {"invoice_number": 0.98, "total_amount": 0.95, "invoice_date": 0.99},
    "processing_time_ms": 4532, "cost_credits": 2, "metadata": {"customer_id": "cust_123", "source": "email"},
    "created_at": "2024-11-23T10:00:00Z", "completed_at": "2024-11-23T10:00:05Z",
}


class Sink:
    def __init__(self) -> None:
        self.received: dict[str, float] = {}
        self.count = 0
        self.done = asyncio.Event()
        self.expect = 0

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.received[request.headers["X-DocExtract-Event-Id"]] = time.perf_counter()
        self.count += 1
        if self.count >= self.expect:
            self.done.set()
        return web.Response(text="OK")


class Bench:
    def __init__(self, server: str) -> None:
        self.server = server
        self.sink = Sink()
        self.url = ""

    async def start_sink(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_post("/hook", self.sink.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
        return runner

    def fresh_database(self) -> str:
        name = f"bench_{secrets.token_hex(4)}"
        with psycopg.connect(self.server, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        dsn = make_conninfo(self.server, dbname=name)
        with psycopg.connect(dsn, autocommit=True) as conn:
            schema.migrate(conn)
            endpoints.add(conn, org_id="org_bench", url=self.url, allow_insecure=True)
        return dsn

    def drop_database(self, dsn: str) -> None:
        name = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
        with psycopg.connect(self.server, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(str(name))))

    async def start_worker(self, dsn: str) -> asyncio.subprocess.Process:
        env = {**os.environ, "DATABASE_URL": dsn, "DELIVERER_ALLOW_INSECURE_URLS": "1",
               "DELIVERER_LOG_LEVEL": "warning", "DELIVERER_LOG_FORMAT": "json", "DELIVERER_METRICS_PORT": "0"}
        return await asyncio.create_subprocess_exec(sys.executable, "-m", "deliverer", "run", env=env,
                                                    stdin=asyncio.subprocess.DEVNULL)

    @staticmethod
    async def stop_worker(proc: asyncio.subprocess.Process) -> None:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)

    async def drain(self, events: int) -> dict[str, float]:
        dsn = self.fresh_database()
        try:
            with psycopg.connect(dsn) as conn:
                for start in range(0, events, 1000):
                    outbox.publish_many(conn, [outbox.Event("job.completed", PAYLOAD, "org_bench")
                                               for _ in range(min(1000, events - start))])
                conn.commit()
            self.sink.received.clear()
            self.sink.count, self.sink.expect = 0, events
            self.sink.done.clear()
            cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
            proc = await self.start_worker(dsn)
            await asyncio.wait_for(self.sink.done.wait(), 600)
            await self.stop_worker(proc)
            cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
            with psycopg.connect(dsn) as conn:
                left = conn.execute("SELECT count(*) FROM delivery_queue").fetchone()[0]
            times = sorted(self.sink.received.values())
            cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
            return {
                "deliveries_per_s": (len(times) - 1) / (times[-1] - times[0]),
                "deliverer_cpu_ms_per_delivery": cpu * 1000 / events,
                "duplicates": self.sink.count - len(self.sink.received),
                "unrecorded_after_stop": left,
            }
        finally:
            self.drop_database(dsn)

    async def latency(self, samples: int) -> dict[str, float]:
        dsn = self.fresh_database()
        try:
            proc = await self.start_worker(dsn)
            self.sink.received.clear()
            self.sink.count, self.sink.expect = 0, samples
            self.sink.done.clear()
            await asyncio.sleep(1.5)  # let the worker connect and start listening
            committed: dict[str, float] = {}
            async with await psycopg.AsyncConnection.connect(dsn) as conn:
                for _ in range(samples):
                    event_id = await outbox.apublish(conn, "job.completed", PAYLOAD, org_id="org_bench")
                    await conn.commit()
                    committed[event_id] = time.perf_counter()
                    await asyncio.sleep(0.02)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.sink.done.wait(), 10)
            await self.stop_worker(proc)
            ms = sorted((self.sink.received[e] - t) * 1000 for e, t in committed.items() if e in self.sink.received)
            return {
                "p50_ms": statistics.median(ms),
                "p95_ms": ms[int(len(ms) * 0.95) - 1],
                "max_ms": ms[-1],
                "lost": samples - len(ms),
            }
        finally:
            self.drop_database(dsn)


def _median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


async def main(args: argparse.Namespace) -> int:
    url = os.environ.get("BENCH_DATABASE_URL") or os.environ.get("DATABASE_URL")
    with devdb.database(url, use_docker=False) as server:
        bench = Bench(server)
        runner = await bench.start_sink()
        try:
            drains = [await bench.drain(args.events) for _ in range(args.repeat)]
            latencies = [await bench.latency(args.latency_samples) for _ in range(args.repeat)]
        finally:
            await runner.cleanup()
        pg_version = psycopg.connect(server).execute("SHOW server_version").fetchone()[0]
    drain, latency = _median_of(drains), _median_of(latencies)
    machine = (f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}, "
               f"PostgreSQL {pg_version}")
    print(f"machine: {machine}; database, sink and deliverer on the same machine; medians of {args.repeat} runs")
    print(f"{'measure':<58}{'value':>12}")
    print(f"{'drain, 1 deliverer process, ' + str(args.events) + ' queued events (deliveries/s)':<58}"
          f"{drain['deliveries_per_s']:>12.0f}")
    print(f"{'  deliverer CPU per delivery (ms)':<58}{drain['deliverer_cpu_ms_per_delivery']:>12.3f}")
    print(f"{'  duplicates / not recorded at stop':<58}"
          f"{drain['duplicates']:>6.0f} / {drain['unrecorded_after_stop']:.0f}")
    print(f"{'idle publish-to-receipt latency, p50 (ms)':<58}{latency['p50_ms']:>12.2f}")
    print(f"{'idle publish-to-receipt latency, p95 (ms)':<58}{latency['p95_ms']:>12.2f}")
    print(f"{'idle publish-to-receipt latency, max (ms)':<58}{latency['max_ms']:>12.2f}")
    RESULTS.mkdir(exist_ok=True)
    out = {"machine": machine, "repeat": args.repeat, "events": args.events, "latency_samples":
           args.latency_samples, "drain": drain, "latency": latency, "drain_runs": drains, "latency_runs": latencies}
    (RESULTS / "latest.json").write_text(json.dumps(out, indent=2))
    print(f"written to {RESULTS / 'latest.json'}")
    lost = latency["lost"] + drain["duplicates"]
    return 1 if lost else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000, help="events queued for the drain run")
    parser.add_argument("--latency-samples", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3, help="runs per measure; the median is reported")
    return parser.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main(parse_args())))
