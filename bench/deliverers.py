"""Real ``python -m deliverer run`` processes, as in production, one per simulated pod.

They run with the default log level (info: failed attempts, not successes), as
JSON written to a file that is shown if a run goes wrong, with no fixed probe port
(``DELIVERER_METRICS_PORT=0`` picks a free one) and ``http://`` loopback URLs
allowed. Everything else is the default unless a scenario says otherwise.
"""

import asyncio
import json
import os
import re
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psycopg

from bench import machine
from bench.database import QUERIES, dbname, fetch_one


class Deliverers:
    """``count`` deliverer processes on one database; ``async with`` starts them and waits until they listen."""

    def __init__(self, dsn: str, count: int, **settings: str) -> None:
        self.dsn, self.count = dsn, count
        self.env = {**os.environ, "DATABASE_URL": dsn, "DELIVERER_LOG_FORMAT": "json", "DELIVERER_METRICS_PORT": "0",
                    "DELIVERER_ALLOW_INSECURE_URLS": "1", "DELIVERER_SHUTDOWN_GRACE": "5", **settings}
        self.processes: list[asyncio.subprocess.Process] = []
        self.log = Path(tempfile.mkstemp(prefix="bench-deliverer-", suffix=".log")[1])

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def cpu(self) -> float:
        return sum(machine.process_cpu(pid) for pid in self.pids)

    async def __aenter__(self) -> "Deliverers":
        with self.log.open("ab") as log:
            for _ in range(self.count):
                self.processes.append(await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "deliverer", "run", env=self.env,
                    stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log))
        await self.wait_listening()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        await self.stop()
        if exc_type is None:
            self.log.unlink(missing_ok=True)  # kept (and named in the error) when something went wrong

    async def wait_listening(self, timeout: float = 60) -> None:
        """Until every process has its LISTEN connection open (it has claimed once by then, or is about to)."""
        deadline = time.monotonic() + timeout
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while fetch_one(conn, "listening_deliverers", {"dbname": dbname(self.dsn)}) < self.count:
                if time.monotonic() > deadline or any(p.returncode is not None for p in self.processes):
                    raise RuntimeError(f"deliverers did not start; their log: {self.log}\n{self.tail()}")
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # the first (empty) claim and its sleep

    def backends(self, conn: psycopg.Connection[Any]) -> list[int]:
        return [row[0] for row in conn.execute(QUERIES["deliverer_backends"], {"dbname": dbname(self.dsn)})]

    async def stop(self) -> None:
        await stop_processes(self.processes, grace=30)

    def peak_rss_mib(self) -> list[float]:
        return [machine.peak_rss_mib(pid) for pid in self.pids]

    def metrics_ports(self) -> list[int]:
        """Each process's /metrics port, from its "probes listening" log line."""
        ports = []
        for line in self.log.read_text(errors="replace").splitlines():
            if '"probes listening"' in line:
                ports.append(int(json.loads(line)["port"]))
        return ports

    async def claims(self) -> tuple[int, int, int]:
        """(claims, claims that leased nothing, deliveries leased) so far, summed over the processes.

        From each worker's ``deliverer_claim_batch_size`` histogram: it observes every claim
        that returned, with the number of deliveries it leased, so its count is the claims,
        its ``le="0.0"`` bucket the empty ones and its sum the leases. Exact, and needs no
        pg_stat_statements.
        """
        total = empty = leased = 0
        for port in self.metrics_ports():
            text = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
            total += int(float(_metric(text, "deliverer_claim_batch_size_count")))
            empty += int(float(_metric(text, 'deliverer_claim_batch_size_bucket{le="0.0"}')))
            leased += int(float(_metric(text, "deliverer_claim_batch_size_sum")))
        return total, empty, leased

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def _metric(text: str, name: str) -> str:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no {name} in a deliverer's /metrics")
    return match.group(1)


async def stop_processes(processes: list[asyncio.subprocess.Process], *, grace: float) -> None:
    """SIGTERM every process, then SIGKILL whichever has not exited within ``grace`` seconds."""
    for process in processes:
        if process.returncode is None:
            process.terminate()
    for process in processes:
        try:
            await asyncio.wait_for(process.wait(), grace)
        except TimeoutError:
            process.kill()
            await process.wait()
