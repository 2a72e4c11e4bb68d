"""Scenario 10: many endpoints in one worker process, a share of them abusive.

Thousands of endpoints, one event each, one `deliverer run` process. A tenth of
them answer like attackers or broken proxies: slow-loris (the status line one
byte every two seconds, never finished), endless headers (junk header lines as
fast as the socket takes them), endless bodies (a 200 whose body never ends).
The same endpoints are first drained all healthy, then with the abusive share:
the worker's memory must stay bounded (peak RSS, VmHWM) and the healthy
endpoints keep their throughput (reported as a ratio, not asserted: this
machine's speed varies), and every abusive attempt must end the way the
receiver matrix says (timeout, protocol error for headers past 64 KiB, success
for a 200 whatever its body; a timeout too where the machine was too busy to read
64 KiB or a status line within the 5 s).
"""

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg

import outbox
from chaos import harness, integrity
from chaos.embedded_postgres import database
from chaos.queries import QUERIES
from chaos.report import Report
from chaos.workers import WorkerProcess
from deliverer.dev.receiver import Receiver
from deliverer.dev.waiting import aeventually
from deliverer.registry import endpoints

WORKER_ENV = {"DELIVERER_RETRY_DELAYS": "3600", "DELIVERER_POLL_INTERVAL": "0.2"}
BEHAVIOURS = ("loris", "headers", "body")
EXPECTED_CLASS = {"loris": "timeout", "headers": "protocol_error", "body": None}
RSS_BOUND_MIB = 512


class Abusive:
    """One port; the request's path says how to misbehave. Counts bytes it pushed."""

    def __init__(self) -> None:
        self.sent = 0
        self._server: asyncio.Server | None = None
        self._stop = asyncio.Event()
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.close()
        for handler in self._handlers:
            handler.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._misbehave(reader, writer)
        finally:
            self._handlers.discard(task)
            writer.close()

    async def _misbehave(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            while not self._stop.is_set():  # keep-alive: the worker may reuse the connection
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                path = head.split(b" ", 2)[1].decode()
                kind = path.split("/")[1]
                if kind == "loris":
                    for byte in b"HTTP/1.1 200 OK\r\n":
                        writer.write(bytes([byte]))
                        self.sent += 1
                        await writer.drain()
                        await asyncio.sleep(2)
                elif kind == "headers":
                    writer.write(b"HTTP/1.1 200 OK\r\n")
                    line = b"X-Junk: " + b"a" * 1000 + b"\r\n"
                    while not self._stop.is_set():
                        writer.write(line)
                        self.sent += len(line)
                        await writer.drain()
                else:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\n")
                    chunk = b"x" * 65536
                    while not self._stop.is_set():
                        writer.write(chunk)
                        self.sent += len(chunk)
                        await writer.drain()


def _add_endpoints(dsn: str, urls: list[str]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for i, url in enumerate(urls):
            endpoints.add(conn, org_id=f"org_abuse_{i}", url=url, event_types=["webhook.test"], allow_insecure=True)


async def _publish(dsn: str, count: int) -> list[str]:
    published: list[str] = []
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        for start in range(0, count, 500):
            published += await outbox.apublish_many(conn, [
                outbox.Event("webhook.test", harness.message(i), f"org_abuse_{i}")
                for i in range(start, min(start + 500, count))])
            await conn.commit()
    return published


async def _drain(dsn: str, workdir: Path, name: str, urls: list[str], healthy: Receiver) -> dict[str, Any]:
    """One worker delivers one event to each of ``urls``; what was published, the healthy receipts' rate,
    the peak RSS."""
    _add_endpoints(dsn, urls)
    worker = WorkerProcess(dsn, name, workdir, **WORKER_ENV)
    await worker.start()
    await worker.wait_logged("worker ready")
    healthy.requests.clear()
    published = await _publish(dsn, len(urls))
    expected = sum(1 for url in urls if "/ok/" in url)
    await healthy.wait_until(lambda: len(healthy.delivered()) >= expected, "every healthy delivery", timeout=180)
    times = sorted(r.at for r in healthy.answered())
    async def all_attempted() -> bool:
        return await _first_attempts_done(dsn) >= len(urls)
    await aeventually(all_attempted, "a first outcome for every delivery", timeout=120, interval=0.2)
    assert worker.proc is not None
    rss = _peak_rss_mib(worker.proc.pid)
    code = await worker.stop()
    return {"published": published, "healthy": expected, "rate": (len(times) - 1) / (times[-1] - times[0]),
            "rss_mib": rss, "exit": code}


async def _first_attempts_done(dsn: str) -> int:
    """Deliveries with an outcome: the abusive ones then wait an hour for their retry."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        row = await (await conn.execute(QUERIES["deliveries_attempted"])).fetchone()
    return int(row[0]) if row else 0


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def run(dsn: str, workdir: Path, *, endpoints_count: int = 10_000, abusive_share: float = 0.1) -> Report:
    started = time.monotonic()
    report = Report("10 many endpoints, abusive receivers", fault_kind="abusive endpoints")
    healthy, abusive = Receiver(keep_content=False), Abusive()
    await healthy.start()
    port = await abusive.start()
    abusive_count = int(endpoints_count * abusive_share)
    ok = [healthy.url(f"/ok/{i}") for i in range(endpoints_count)]
    mixed = ok[abusive_count:] + [f"http://127.0.0.1:{port}/{BEHAVIOURS[i % 3]}/{i}" for i in range(abusive_count)]
    try:
        with database(dsn) as baseline_dsn:
            baseline = await _drain(baseline_dsn, workdir, "abuse-baseline", ok, healthy)
        mixed_run = await _drain(dsn, workdir, "abuse-mixed", mixed, healthy)
    finally:
        await abusive.stop()
        await healthy.stop()
    report.faults = abusive_count
    report.published = len(mixed_run["published"])
    report.check(baseline["exit"] == 0 and mixed_run["exit"] == 0, f"worker exits {baseline['exit']}, "
                                                                  f"{mixed_run['exit']}")
    report.check(mixed_run["rss_mib"] < RSS_BOUND_MIB,
                 f"peak RSS {mixed_run['rss_mib']:.0f} MiB with abusive receivers (bound {RSS_BOUND_MIB})")
    with psycopg.connect(dsn, autocommit=True) as conn:
        outcomes = conn.execute(QUERIES["outcomes_by_behaviour"],
                                {"healthy_prefix": healthy.url("/ok/") + "%"}).fetchall()
    by_kind = {(kind, error_class): n for kind, error_class, n in outcomes}
    for i, kind in enumerate(BEHAVIOURS):
        # With a thousand abusive connections on two cores, some headers or bodies come too
        # late: a timeout is then the right outcome too, and nothing else is.
        want = len(range(i, abusive_count, 3))
        got = by_kind.get((kind, EXPECTED_CLASS[kind]), 0)
        late = by_kind.get((kind, "timeout"), 0) if kind != "loris" else 0
        report.check(got + late == want and got >= 0.9 * want,
                     f"{kind}: {got} of {want} attempts ended {EXPECTED_CLASS[kind]}, {late} timed out; all: {by_kind}")
    report.expected = {(event_id, urlsplit(url).path) for event_id, url in zip(mixed_run["published"], mixed,
                                                                                strict=True) if "/ok/" in url}
    report.delivered = healthy.delivered()
    ratio = mixed_run["rate"] / baseline["rate"]
    report.notes.append(
        f"{endpoints_count:,} endpoints, {abusive_count:,} abusive ({', '.join(BEHAVIOURS)}), one process: healthy "
        f"deliveries/s {mixed_run['rate']:,.0f} vs {baseline['rate']:,.0f} all healthy (ratio {ratio:.2f}); peak RSS "
        f"{mixed_run['rss_mib']:.0f} MiB vs {baseline['rss_mib']:.0f} MiB; the abusive receivers pushed "
        f"{abusive.sent / 2**20:,.0f} MiB")
    report.problems += integrity.log_problems(dsn)
    report.wall_s = time.monotonic() - started
    report.close()
    return report
