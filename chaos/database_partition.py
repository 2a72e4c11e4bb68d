"""Scenario 2d: a partition between the workers and PostgreSQL that drops everything and resets nothing.

The workers reach the database through a relay (chaos.relay) that turns into a
black hole mid-run for longer than a lease, while producers keep committing
directly. Each worker must notice within DELIVERER_DB_TIMEOUT + 10 s (psycopg's
cancel of the statement it was waiting for), report not ready, keep running, and,
once the relay heals, be ready again by itself; the leases that ran out meanwhile
are retaken, every committed event is delivered, and every duplicate is an
attempt whose outcome arrived after its lease had been taken over (logged as a
late result, which changes nothing).
"""

import asyncio
import time
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from chaos import harness
from chaos.relay import Relay
from chaos.report import Report
from chaos.workers import WorkerProcess
from deliverer.dev.receiver import Receiver

DB_TIMEOUT = 2.0
LEASE = 7.0
WORKER_ENV = {"DELIVERER_DB_TIMEOUT": f"{DB_TIMEOUT:g}", "DELIVERER_LEASE_SECONDS": f"{LEASE:g}",
              "DELIVERER_HTTP_TIMEOUT": "2", "DELIVERER_POLL_INTERVAL": "0.2"}
NOTICE_BOUND = DB_TIMEOUT + 10 + 5  # the timeout, psycopg's cancel, and a loaded machine's slack


async def run(dsn: str, workdir: Path, *, events: int = 3000, partition_seconds: float = 8.0) -> Report:
    started = time.monotonic()
    report = Report("2d database: partition", fault_kind="black-holed relay")
    params = conninfo_to_dict(dsn)
    host = str(params.get("host") or "127.0.0.1")
    relay = Relay(host, int(params.get("port") or 5432))
    relay.start()
    through_relay = make_conninfo(dsn, host="127.0.0.1", port=str(relay.port))
    sink = Receiver(keep_content=False)
    await sink.start()
    paths = ["/partition/a", "/partition/b"]
    for path in paths:
        harness.add_endpoint(dsn, sink.url(path), "org_partition")
    workers = [WorkerProcess(through_relay, f"partition-db-w{i}", workdir, **WORKER_ENV) for i in range(2)]
    published: list[str] = []
    try:
        for worker in workers:
            await worker.start()
        for worker in workers:
            await worker.wait_logged("worker ready")
        published += await harness.publish(dsn, events // 2, "org_partition", batch=50, pause=0.02)
        await sink.wait_until(lambda: len(sink.delivered()) >= events // 2, "half the deliveries", timeout=60)
        relay.black_hole()
        report.faults += 1
        cut = time.monotonic()
        producing = asyncio.ensure_future(  # producers reach the database directly: they go on committing
            harness.publish(dsn, events - events // 2, "org_partition", batch=50, pause=0.05))
        for worker in workers:
            await worker.wait_logged("worker not ready", timeout=NOTICE_BOUND)
        noticed = time.monotonic() - cut
        report.check(noticed <= NOTICE_BOUND, f"workers noticed the partition after {noticed:.1f} s")
        await asyncio.sleep(max(0.0, partition_seconds - (time.monotonic() - cut)))  # the partition's length
        for worker in workers:
            report.check(worker.running, f"{worker.name} exited during the partition:\n{worker.log()[-2000:]}")
        relay.heal()
        healed = time.monotonic()
        published += await producing
        for worker in workers:
            await worker.wait_logged("worker ready", times=2, timeout=60)
        ready_again = time.monotonic() - healed
        report.published = len(published)
        report.expected = {(e, p) for e in published for p in paths}
        await harness.until_drained(dsn, timeout=90)
        await sink.wait_until(lambda: sink.delivered() >= report.expected, "every delivery", timeout=30)
        codes = [await w.stop() for w in workers]
        report.check(codes == [0, 0], f"workers exited with {codes}")
    finally:
        await sink.stop()
        await relay.stop()
    report.delivered = sink.delivered()
    report.notes.append(f"workers not ready {noticed:.1f} s after the cut (bound {NOTICE_BOUND:g} s: "
                        f"DELIVERER_DB_TIMEOUT {DB_TIMEOUT:g} s + psycopg's cancel), partition "
                        f"{partition_seconds:g} s (lease {LEASE:g} s), ready again {ready_again:.1f} s after it healed")
    return harness.finish(report, dsn, sink.answered(), set(), started)
