"""Scenario 5: eight producer threads commit and roll back at random while workers deliver.

Each transaction changes the application's own table and publishes one to
five events, some under a dedupe key drawn from a small shared pool so that
threads collide on keys. Committed ids (including the first id a deduplicated
publish returns) form the committed set; the delivered set must equal it
exactly: nothing from a rolled-back transaction, nothing twice.
"""

import asyncio
import random
import threading
import time
from pathlib import Path

import psycopg

import outbox
from chaos import harness
from chaos.queries import QUERIES
from chaos.report import Report
from chaos.workers import WorkerProcess
from deliverer.dev.receiver import Receiver

KEYS = 300  # the dedupe key pool: small enough that threads collide


class _Producers:
    def __init__(self, dsn: str, threads: int, transactions: int, seed: int | None) -> None:
        self.dsn, self.threads, self.transactions = dsn, threads, transactions
        self.seed = seed
        self.committed: set[str] = set()
        self.rolled_back: set[str] = set()
        self.counts = {"commit": 0, "rollback": 0, "deadlock": 0, "keyed_events": 0, "dedupe_hits": 0}
        self._lock = threading.Lock()

    def run(self) -> None:
        threads = [threading.Thread(target=self._produce, args=(i,)) for i in range(self.threads)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _produce(self, index: int) -> None:
        rng = random.Random(None if self.seed is None else self.seed * 100 + index)
        with psycopg.connect(self.dsn) as conn:
            for t in range(self.transactions):
                events = []
                for i in range(rng.randint(1, 5)):
                    key = f"job_{rng.randrange(KEYS)}" if rng.random() < 0.4 else None
                    events.append(outbox.Event("webhook.test", harness.message(i), "org_producers", key))
                commit = rng.random() < 0.6
                try:
                    conn.execute(QUERIES["producer_save_job"], {"id": f"job_{index}_{t}", "status": "completed"})
                    ids = outbox.publish_many(conn, events)
                    if commit:
                        conn.commit()
                    else:
                        conn.rollback()
                except psycopg.errors.DeadlockDetected:
                    # Two transactions took the same keys in opposite orders; the loser rolls back.
                    conn.rollback()
                    with self._lock:
                        self.counts["deadlock"] += 1
                    continue
                with self._lock:
                    self.counts["commit" if commit else "rollback"] += 1
                    keyed = [i for i, event in zip(ids, events, strict=True) if event.dedupe_key is not None]
                    self.counts["keyed_events"] += len(keyed)
                    # A key already committed returns the first event's id: that publish wrote nothing.
                    self.counts["dedupe_hits"] += sum(1 for i in keyed if i in self.committed)
                    (self.committed if commit else self.rolled_back).update(ids)


async def run(dsn: str, workdir: Path, *, threads: int = 8, transactions: int = 400,
              seed: int | None = None) -> Report:
    started = time.monotonic()
    report = Report("5 concurrent producers", fault_kind="rollbacks")
    sink = await Receiver(keep_content=False).start()
    paths = ["/producers/a", "/producers/b"]
    for path in paths:
        harness.add_endpoint(dsn, sink.url(path), "org_producers")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(QUERIES["producer_table"])
    workers = [WorkerProcess(dsn, f"producers-w{i}", workdir, DELIVERER_POLL_INTERVAL="0.2",
                             DELIVERER_LOG_LEVEL="warning") for i in range(2)]
    producers = _Producers(dsn, threads, transactions, seed)
    try:
        for worker in workers:
            await worker.start()
        await asyncio.to_thread(producers.run)
        report.expected = {(e, p) for e in producers.committed for p in paths}
        await sink.wait_until(lambda: sink.delivered() >= report.expected, "every committed delivery", timeout=120)
        await harness.until_drained(dsn, 60)
        codes = [await w.stop() for w in workers]
        report.check(codes == [0, 0], f"workers exited with {codes}")
    finally:
        for worker in workers:
            worker.kill()
        await sink.stop()
    report.published = len(producers.committed)
    report.faults = producers.counts["rollback"] + producers.counts["deadlock"]
    report.delivered = sink.delivered()
    # A rolled-back publish whose dedupe key another transaction had committed returns that committed id.
    only_rolled_back = producers.rolled_back - producers.committed
    report.check(not {e for e, _ in report.delivered} & only_rolled_back,
                 "an event of a rolled-back transaction was delivered")
    report.notes.append(f"producers: {producers.counts}")
    return harness.finish(report, dsn, sink.answered(), set(), started)
