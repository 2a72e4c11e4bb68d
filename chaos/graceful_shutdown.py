"""Scenario 4: SIGTERM, the shutdown grace, a second SIGTERM, and what is handed back.

1. In-flight sends that finish within the grace are recorded by the stopping
   worker itself, and it claims nothing after SIGTERM; it exits 0.
2. When the grace runs out, sends still in flight are cut off and handed back:
   logged as abandoned (error class ``shutdown``) and due at once, so another
   worker takes them long before their lease would have ended; exit 0.
3. A second SIGTERM does the same without waiting for the grace.
"""

import asyncio
import signal
import time
from datetime import timedelta
from pathlib import Path

import psycopg
from aiohttp import web

from chaos import harness
from chaos.queries import QUERIES
from chaos.report import Report
from chaos.workers import WorkerProcess
from deliverer.dev.receiver import Receiver
from outbox.ids import delivery_public_id

LEASE = 60  # far longer than the test: a takeover can only come from a hand-back
ENV = {"DELIVERER_HTTP_TIMEOUT": "30", "DELIVERER_LEASE_SECONDS": str(LEASE), "DELIVERER_POLL_INTERVAL": "0.2",
       # Every held send in flight at once, as the scenario needs, not a slow start's first few.
       "DELIVERER_ENDPOINT_INITIAL_CONCURRENCY": "50"}


def _facts(dsn: str) -> list[tuple]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(QUERIES["attempt_facts"]).fetchall()


async def run(dsn: str, workdir: Path, *, held: int = 20, grace: float = 2.0) -> Report:
    started = time.monotonic()
    report = Report("4 graceful shutdown", fault_kind="SIGTERM")
    sink = await Receiver(keep_content=False).start()
    release = asyncio.Event()

    async def hold_first_attempt(request: web.Request, n: int) -> web.StreamResponse:
        if request.headers["X-DocExtract-Delivery-Attempt"] == "1":
            await release.wait()
        return web.Response(text="OK")

    paths = {"finish": "/shutdown/finish", "grace": "/shutdown/grace", "second": "/shutdown/second",
             "after": "/shutdown/after"}
    for part, path in paths.items():
        if part != "after":
            sink.behave(path, hold_first_attempt)
        harness.add_endpoint(dsn, sink.url(path), f"org_{part}")
    published: dict[str, list[str]] = {}
    stopping: list[WorkerProcess] = []
    try:
        # 1. In-flight sends finish within the grace; nothing new is claimed after SIGTERM.
        a = WorkerProcess(dsn, "shutdown-finish", workdir, DELIVERER_SHUTDOWN_GRACE="60", **ENV)
        stopping.append(a)
        await a.start()
        published["finish"] = await harness.publish(dsn, held, "org_finish")
        await sink.wait_until(lambda: sink.arrivals[paths["finish"]] >= held, "the held sends", timeout=60)
        a.signal(signal.SIGTERM)
        await a.wait_logged("finishing in-flight sends")
        report.faults += 1
        published["after"] = await harness.publish(dsn, held, "org_after")
        release.set()
        report.check(await a.wait() == 0, "part 1: the worker did not exit 0")
        release.clear()

        # 2. The grace runs out: cut-off sends are handed back and taken over at once.
        b = WorkerProcess(dsn, "shutdown-grace", workdir, DELIVERER_SHUTDOWN_GRACE=str(grace), **ENV)
        stopping.append(b)
        await b.start()
        await sink.wait_until(lambda: len(sink.to(paths["after"])) >= held,
                            "the deliveries published after the first SIGTERM", timeout=60)
        published["grace"] = await harness.publish(dsn, held, "org_grace")
        await sink.wait_until(lambda: sink.arrivals[paths["grace"]] >= held, "the held sends", timeout=60)
        b.signal(signal.SIGTERM)
        report.faults += 1
        report.check(await b.wait() == 0, "part 2: the worker did not exit 0 after its grace")

        # 3. A second SIGTERM cuts the grace short.
        c = WorkerProcess(dsn, "shutdown-second", workdir, DELIVERER_SHUTDOWN_GRACE="600", **ENV)
        stopping.append(c)
        await c.start()
        published["second"] = await harness.publish(dsn, held, "org_second")
        await sink.wait_until(lambda: sink.arrivals[paths["second"]] >= held, "the held sends", timeout=60)
        c.signal(signal.SIGTERM)
        await c.wait_logged("finishing in-flight sends")
        c.signal(signal.SIGTERM)
        report.faults += 2
        report.check(await c.wait() == 0, "part 3: the worker did not exit 0 after a second SIGTERM")

        # Whoever comes next delivers what was handed back.
        release.set()
        d = WorkerProcess(dsn, "shutdown-next", workdir, **ENV)
        await d.start()
        await harness.until_drained(dsn, 60)
        report.check(await d.stop() == 0, "the last worker did not exit 0")
    finally:
        release.set()
        for proc in stopping:
            proc.kill()
        await sink.stop()

    _check_log(dsn, report, published, held)
    report.published = sum(len(ids) for ids in published.values())
    report.expected = {(e, paths[part]) for part, ids in published.items() for e in ids}
    report.delivered = sink.delivered()
    return harness.finish(report, dsn, sink.answered(), set(), started)


def _check_log(dsn: str, report: Report, published: dict[str, list[str]], held: int) -> None:
    # An attempt is one log row (finished or abandoned), with the worker that made it.
    by_attempt: dict[tuple[str, int], dict[str, tuple]] = {}
    for delivery_id, attempt, kind, outcome, worker_id, error_class, _, _, started_at, recorded_at, next_at in \
            _facts(dsn):
        by_attempt.setdefault((delivery_public_id(delivery_id), attempt), {})[kind] = (
            outcome, worker_id, error_class, started_at, recorded_at, next_at)

    def made_by(v: dict[str, tuple]) -> str:
        return next((row[1] for kind, row in v.items() if kind != "late_result"), "")

    finish_ok = [k for k, v in by_attempt.items()
                 if made_by(v) == "shutdown-finish" and v.get("attempt_finished", ("",))[0] == "succeeded"]
    report.check(len(finish_ok) == held, f"part 1: {len(finish_ok)} of {held} in-flight sends were recorded "
                                         "as delivered by the stopping worker")
    claimed_by_a = sum(1 for v in by_attempt.values() if made_by(v) == "shutdown-finish")
    report.check(claimed_by_a == held, f"part 1: the stopping worker claimed {claimed_by_a - held} deliveries "
                                       "after SIGTERM")
    for name in ("shutdown-grace", "shutdown-second"):
        handed = [(k, v) for k, v in by_attempt.items() if made_by(v) == name and "attempt_abandoned" in v]
        report.check(len(handed) >= held, f"{name}: {len(handed)} of at least {held} sends handed back")
        for (delivery_id, attempt), v in handed:
            outcome, worker, error_class, sent_at, recorded_at, next_at = v["attempt_abandoned"]
            lease_end = sent_at + timedelta(seconds=LEASE)  # at the latest: the lease began before the send
            report.check((outcome, worker, error_class) == ("unknown", name, "shutdown"),
                         f"{name}: {delivery_id} abandoned as {(outcome, worker, error_class)}")
            report.check(next_at == recorded_at, f"{name}: {delivery_id} handed back due at {next_at}, not at once")
            following = by_attempt.get((delivery_id, attempt + 1), {})
            retry = following.get("attempt_finished") or following.get("attempt_abandoned")
            report.check(retry is not None and retry[3] < lease_end,
                         f"{name}: {delivery_id} was not retried before its lease would have ended")
