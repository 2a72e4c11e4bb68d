"""Scenario 9: receivers behind a partition that drops packets instead of refusing them.

Two endpoints are cut off the way a silent network failure cuts them: at one the
connection never completes (its listen queue is full, so the kernel drops every
SYN: the client retransmits and waits), at the other it completes but no answer
ever comes. Beside them a healthy endpoint takes a stream of events. With two
real worker processes, every attempt at the cut-off endpoints must be recorded
as a ``timeout``, retried on the schedule, and never more requests may be open
to one of them than its ``max_in_flight``, counted where they really are: the
connections in SYN-SENT to the first (from ``/proc/net/tcp``), the connections
held open at the second. The healthy endpoint gets everything.
"""

import asyncio
import contextlib
import itertools
import socket
import time
from datetime import timedelta
from pathlib import Path

import psycopg

from chaos import harness
from chaos.queries import QUERIES
from chaos.report import Report
from chaos.workers import WorkerProcess
from deliverer.dev.receiver import Receiver

MAX_IN_FLIGHT = 2
SYN_SENT = "02"  # /proc/net/tcp's state code


def syn_sent_to(port: int, table: str = "/proc/net/tcp") -> int:
    """Sockets on this machine waiting for an answer to their SYN to 127.0.0.1:``port``."""
    wanted = f"0100007F:{port:04X}"
    # Counted by local address, not by line: the kernel writes this table a page per read() and
    # resumes its walk of the socket hash from a saved bucket and offset (or by counting rows from the
    # start), so sockets opened and closed meanwhile can make one reading list rows twice (seen: 4
    # SYN-SENT rows that were 2 sockets, same inodes) or miss some, which only ever lowers a peak.
    # Two sockets to one destination never share a local address.
    sources: set[str] = set()
    with open(table) as rows:
        next(rows)
        for line in rows:
            fields = line.split()
            if fields[2] == wanted and fields[3] == SYN_SENT:
                sources.add(fields[1])
    return len(sources)


class _BlackHole:
    """A port whose SYNs are dropped: a listen queue of one, filled by a connection of its own."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(0)
        self.port = self.listener.getsockname()[1]
        self.filler = socket.create_connection(("127.0.0.1", self.port))

    def close(self) -> None:
        self.filler.close()
        self.listener.close()


class _Silent:
    """A server that accepts, reads, and never answers; counts the connections it holds."""

    def __init__(self) -> None:
        self.open = 0
        self.peak = 0
        self._release = asyncio.Event()
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._hold, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        self.peak = max(self.peak, self.open)
        try:
            with contextlib.suppress(ConnectionError):
                while not self._release.is_set() and await reader.read(65536):
                    pass  # read everything, answer nothing
        finally:
            self.open -= 1
            writer.close()

    async def stop(self) -> None:
        self._release.set()
        if self._server is not None:
            self._server.close()


async def run(dsn: str, workdir: Path, *, cut_off_events: int = 10, healthy_events: int = 500,
              timeout: float = 1.0, delays: tuple[float, ...] = (1.0, 2.0)) -> Report:
    """``cut_off_events`` to each cut-off endpoint (``len(delays) + 1`` attempts each), ``healthy_events``
    beside them; an HTTP timeout of ``timeout`` seconds."""
    started = time.monotonic()
    report = Report("9 receivers: dropped packets", fault_kind="partitioned endpoints")
    hole, silent, healthy = _BlackHole(), _Silent(), Receiver(keep_content=False)
    silent_port = await silent.start()
    await healthy.start()
    urls = {"syn": f"http://127.0.0.1:{hole.port}/hook", "silent": f"http://127.0.0.1:{silent_port}/hook"}
    cut_off = {name: harness.add_endpoint(dsn, url, f"org_{name}") for name, url in urls.items()}
    harness.add_endpoint(dsn, healthy.url("/healthy"), "org_healthy")
    with psycopg.connect(dsn, autocommit=True) as conn:
        for endpoint_id in cut_off.values():
            conn.execute(QUERIES["set_max_in_flight"], {"endpoint_id": endpoint_id, "max_in_flight": MAX_IN_FLIGHT})
    env = {"DELIVERER_HTTP_TIMEOUT": f"{timeout:g}", "DELIVERER_RETRY_DELAYS": ",".join(f"{d:g}" for d in delays),
           "DELIVERER_POLL_INTERVAL": "0.2"}
    workers = [WorkerProcess(dsn, f"partition-w{i}", workdir, **env) for i in range(2)]
    peaks = {"syn": 0, "silent": 0}
    sampling = True

    async def sample() -> None:
        while sampling:
            peaks["syn"] = max(peaks["syn"], syn_sent_to(hole.port))
            peaks["silent"] = max(peaks["silent"], silent.open)
            await asyncio.sleep(0.01)

    sampler = asyncio.create_task(sample())
    try:
        for worker in workers:
            await worker.start()
        for worker in workers:
            await worker.wait_logged("worker ready")
        cut_off_ids = [await harness.publish(dsn, cut_off_events, f"org_{name}") for name in urls]
        published = await harness.publish(dsn, healthy_events, "org_healthy", batch=50, pause=0.05)
        report.published = len(published) + sum(len(ids) for ids in cut_off_ids)
        report.faults = len(urls)
        attempts = cut_off_events * (len(delays) + 1)
        await harness.until_drained(dsn, timeout=60 + 2 * attempts * timeout / MAX_IN_FLIGHT + sum(delays))
        report.expected = {(e, "/healthy") for e in published}
        await healthy.wait_until(lambda: healthy.delivered() >= report.expected, "every healthy delivery",
                                 timeout=30)
        codes = [await w.stop() for w in workers]
        report.check(codes == [0, 0], f"workers exited with {codes}")
    finally:
        sampling = False
        await sampler
        await silent.stop()
        hole.close()
        await healthy.stop()
    report.delivered = healthy.delivered()
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(QUERIES["finished_attempts_by_endpoint"],
                            {"endpoint_ids": list(cut_off.values())}).fetchall()
    names = {endpoint_id: name for name, endpoint_id in cut_off.items()}
    by_delivery: dict[object, list[tuple[object, ...]]] = {}
    for row in rows:
        by_delivery.setdefault(row[1], []).append(row)
    report.check(len(by_delivery) == 2 * cut_off_events,
                 f"{len(by_delivery)} of {2 * cut_off_events} cut-off deliveries attempted")
    for delivery, tries in by_delivery.items():
        name = names[tries[0][0]]
        classes = {t[3] for t in tries}
        report.check(classes == {"timeout"}, f"{name} delivery {delivery}: error classes {classes}, not timeout")
        report.check([t[2] for t in tries] == list(range(1, len(delays) + 2)),
                     f"{name} delivery {delivery}: attempts {[t[2] for t in tries]}")
        report.check(tries[-1][5] is None, f"{name} delivery {delivery}: not failed after its last attempt")
        for (_, _, n, _, started_at, next_at), following in itertools.pairwise(tries):
            gap = following[4] - next_at
            report.check(gap >= timedelta(0) and next_at - started_at >= timedelta(seconds=delays[n - 1]),
                         f"{name} delivery {delivery}: attempt {n + 1} at {following[4]}, due {next_at}")
    for name, peak in peaks.items():
        report.check(1 <= peak <= MAX_IN_FLIGHT, f"{name}: {peak} requests open at once (max_in_flight "
                                                 f"{MAX_IN_FLIGHT}, 1 or more expected)")
    report.notes.append(f"peak open at the cut-off endpoints (max_in_flight {MAX_IN_FLIGHT}): SYN-SENT "
                        f"{peaks['syn']}, held connections {peaks['silent']}; {len(rows)} attempts, all timeouts, "
                        "each on schedule")
    return harness.finish(report, dsn, healthy.answered(), set(), started)
