"""Scenario 11: the primary dies and a synchronous standby takes over.

The scenario builds its own pair from the machine's PostgreSQL binaries: a
primary and a streaming standby named in ``synchronous_standby_names``, so a
producer's COMMIT returns only once the standby has the commit record. Producers
and ``deliverer run`` processes use libpq's multi-host URL with
``target_session_attrs=read-write``; nothing tells them which host is which. The
primary is stopped with an immediate shutdown (every process quits at once, as in
a crash) and the standby is promoted. Every event whose COMMIT returned must be
delivered, and the workers must find the new primary by themselves.

A batch whose COMMIT was in flight when the primary died has no known outcome:
the standby may or may not have its commit record. Such events are neither
expected nor forbidden, but each must arrive at every endpoint or at none.
Claims commit without waiting for the standby (``synchronous_commit`` off), so
the last ones may be missing on the new primary: those deliveries are sent again
and explained as in the server-crash scenario.
"""

import asyncio
import contextlib
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import psycopg
from psycopg.conninfo import conninfo_to_dict

import outbox
from chaos import harness
from chaos.embedded_postgres import create_database
from chaos.report import Report
from chaos.workers import WorkerProcess
from deliverer.dev.receiver import Receiver
from deliverer.dev.waiting import aeventually
from deliverer.registry import apikeys

BIN = Path(os.environ.get("CHAOS_PG_BIN", "/usr/lib/postgresql/15/bin"))
STANDBY_NAME = "standby1"
# The outage must be shorter than the lease, or sends finished during it could be retried.
WORKER_ENV = {"DELIVERER_HTTP_TIMEOUT": "5", "DELIVERER_LEASE_SECONDS": "20", "DELIVERER_POLL_INTERVAL": "0.2"}
PRODUCER_CONNECT_TIMEOUT = 3
BATCH = 20


def unavailable() -> str | None:
    """Why this machine cannot run the scenario, or None if it can."""
    missing = [name for name in ("initdb", "pg_ctl", "pg_basebackup") if not (BIN / name).is_file()]
    if missing:
        return f"no PostgreSQL binaries {', '.join(missing)} in {BIN} (set CHAOS_PG_BIN)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no user postgres to run the servers as"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Pair:
    """A primary and a synchronous standby on 127.0.0.1, in a temporary directory."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="chaosha-"))
        self.primary, self.standby = self.root / "primary", self.root / "standby"
        self.ports = (_free_port(), _free_port())
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")

    def _run(self, tool: str, *args: str) -> None:
        command = [str(BIN / tool), *args]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")

    def _pg_ctl(self, datadir: Path, *args: str) -> None:
        self._run("pg_ctl", "-w", "-D", str(datadir), "-l", str(self.root / f"{datadir.name}.log"), *args)

    def _settings(self, datadir: Path, port: int, extra: str = "") -> None:
        with (datadir / "postgresql.auto.conf").open("a") as conf:
            conf.write(f"port = {port}\nlisten_addresses = '127.0.0.1'\n"
                       f"unix_socket_directories = '{self.root}'\n{extra}")

    def url(self, which: int) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.ports[which]}/postgres"

    def start(self) -> None:
        self._run("initdb", "-D", str(self.primary), "-A", "trust", "-U", "postgres", "--no-sync")
        # fsync off: no machine crashes here, and the standby is what has to hold the commits.
        self._settings(self.primary, self.ports[0], "wal_level = replica\nmax_wal_senders = 5\nfsync = off\n"
                       f"synchronous_standby_names = '{STANDBY_NAME}'\nsynchronous_commit = on\n")
        self._pg_ctl(self.primary, "start")
        self._run("pg_basebackup", "-h", "127.0.0.1", "-p", str(self.ports[0]), "-U", "postgres",
                  "-D", str(self.standby), "-R", "-X", "stream")
        # The later line wins: the same conninfo as -R wrote, plus the name the primary waits for. The copied
        # synchronous_standby_names goes: once promoted, commits would wait for a standby that is not there.
        self._settings(self.standby, self.ports[1],
                       "synchronous_standby_names = ''\n"
                       f"primary_conninfo = 'host=127.0.0.1 port={self.ports[0]} user=postgres "
                       f"application_name={STANDBY_NAME}'\n")
        self._pg_ctl(self.standby, "start")

    def kill_primary(self) -> None:
        self._pg_ctl(self.primary, "-m", "immediate", "stop")

    def promote(self) -> None:
        self._pg_ctl(self.standby, "promote")

    def stop(self) -> None:
        for datadir in (self.primary, self.standby):
            with contextlib.suppress(Exception):
                self._pg_ctl(datadir, "-m", "immediate", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def pair() -> Iterator[Pair]:
    servers = Pair()
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()


async def _synchronous(server: str) -> None:
    async def standby_is_sync() -> bool:
        async with await psycopg.AsyncConnection.connect(server, autocommit=True) as conn:
            rows = await (await conn.execute(
                "SELECT 1 FROM pg_stat_replication WHERE application_name = %s AND sync_state = 'sync'",
                [STANDBY_NAME])).fetchall()
        return bool(rows)
    await aeventually(standby_is_sync, "the standby to stream synchronously", timeout=30, interval=0.2)


class _Producers:
    """Producers publishing small batches, each in its own transaction, through the failover."""

    def __init__(self, dsn: str, org_id: str) -> None:
        self.dsn, self.org_id = dsn, org_id
        self.committed: list[str] = []  # COMMIT returned
        self.uncertain: list[list[str]] = []  # COMMIT sent, the connection died before the answer
        self.errors: list[str] = []
        self.n = 0

    async def produce(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                async with await psycopg.AsyncConnection.connect(
                        self.dsn, connect_timeout=PRODUCER_CONNECT_TIMEOUT) as conn:
                    while not stop.is_set():
                        self.n += BATCH
                        ids = await outbox.apublish_many(
                            conn, [outbox.Event("webhook.test", harness.message(self.n + i), self.org_id)
                                   for i in range(BATCH)])
                        try:
                            await conn.commit()
                        except psycopg.OperationalError:
                            self.uncertain.append(ids)
                            raise
                        self.committed += ids
                        await asyncio.sleep(0.02)  # the producer's pace: events keep coming through the failover
            except psycopg.OperationalError as exc:
                self.errors.append(f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}")
                await asyncio.sleep(0.2)  # an application's pause before reconnecting, part of the load


KEDA = Path(__file__).resolve().parent.parent / "deploy" / "components" / "keda" / "scaledobject.yaml"


def keda_query() -> str:
    """The query KEDA scales the deliverers by, as the deployment gives it."""
    found = re.search(r"query: >-\n\s+(.+)\n", KEDA.read_text())
    assert found, f"no query in {KEDA}"
    return found[1]


class _Api:
    """A `deliverer api` process on the multi-host URL, and whether it answers an org's listing."""

    def __init__(self, dsn: str, org_id: str, workdir: Path) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            self.key = apikeys.create(conn, org_id).key
        self.port = _free_port()
        self.log_path = workdir / "failover-api.log"
        self.env = {**os.environ, "DATABASE_URL": dsn, "DELIVERER_API_PORT": str(self.port),
                    "DELIVERER_METRICS_PORT": "0", "DELIVERER_LOG_FORMAT": "json"}
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "deliverer", "api", env=self.env,
                                                             stdout=log, stderr=log)
        await aeventually(self.answers, "the API to list the org's endpoints", timeout=30, interval=0.1)

    async def answers(self) -> bool:
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http, http.get(
                    f"http://127.0.0.1:{self.port}/v1/webhooks", headers={"Authorization": f"Bearer {self.key}"}) as r:
                return r.status == 200
        return False

    async def stop(self) -> int | None:
        if self.proc is None:
            return None
        self.proc.terminate()
        return await self.proc.wait()


def _keda_answer(dsn: str) -> tuple[int, bool]:
    """The KEDA query's answer on a new connection to the multi-host URL, and whether that is a standby."""
    with psycopg.connect(dsn, autocommit=True, connect_timeout=PRODUCER_CONNECT_TIMEOUT) as conn:
        row = conn.execute(keda_query()).fetchone()
        standby = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    assert row is not None and standby is not None
    return int(row[0]), bool(standby[0])


async def run(workdir: Path, *, workers: int = 3, producers: int = 2, before: int = 1000,
              after: int = 1000) -> Report:
    """Fail over once ``before`` events were delivered to each endpoint; stop producing ``after`` more later."""
    started = time.monotonic()
    report = Report("11 failover to a synchronous standby", fault_kind="primary killed, standby promoted")
    reason = unavailable()
    if reason:
        report.notes.append(f"skipped: {reason}")
        return report
    with pair() as servers:
        await _synchronous(servers.url(0))
        single = create_database(servers.url(0))
        dbname = conninfo_to_dict(single)["dbname"]
        dsn = (f"postgresql://postgres@127.0.0.1:{servers.ports[0]},127.0.0.1:{servers.ports[1]}/{dbname}"
               "?target_session_attrs=read-write")
        sink = Receiver(keep_content=False)
        await sink.start()
        paths = ["/failover/a", "/failover/b"]
        for path in paths:
            harness.add_endpoint(dsn, sink.url(path), "org_failover")
        procs = [WorkerProcess(dsn, f"failover-w{i}", workdir, **WORKER_ENV) for i in range(workers)]
        for worker in procs:
            await worker.start()
        for worker in procs:
            await worker.wait_logged("worker ready")
        api = _Api(dsn, "org_failover", workdir)
        await api.start()
        makers = [_Producers(dsn, "org_failover") for _ in range(producers)]
        stop = asyncio.Event()
        tasks = [asyncio.create_task(m.produce(stop)) for m in makers]
        try:
            await sink.wait_until(lambda: len(sink.delivered()) >= before * len(paths),
                                  "deliveries before the failover", timeout=120)
            await asyncio.to_thread(servers.kill_primary)
            report.faults += 1
            for worker in procs:
                await worker.wait_logged("worker not ready")
            await asyncio.to_thread(servers.promote)
            promoted = time.perf_counter()
            await aeventually(api.answers, "the API to answer from the new primary", timeout=30, interval=0.05)
            api_back = time.perf_counter() - promoted
            due, on_standby = await asyncio.to_thread(_keda_answer, dsn)
            report.check(not on_standby, "KEDA's query reached a standby, not the new primary")
            report.notes.append(f"the API answered again {api_back:.2f} s after the promotion; KEDA's query, on a "
                                f"new connection to the multi-host URL, reached the new primary ({due} due)")
            target = len(sink.delivered()) + after * len(paths)
            await sink.wait_until(lambda: len(sink.delivered()) >= target, "deliveries after the failover",
                                  timeout=120)
            for worker in procs:
                await worker.wait_logged("worker ready", times=2)
        finally:
            stop.set()
            await asyncio.gather(*tasks)
        committed = [e for m in makers for e in m.committed]
        uncertain = [e for m in makers for batch in m.uncertain for e in batch]
        report.published = len(committed)
        report.expected = {(e, p) for e in committed for p in paths}
        for worker in procs:
            report.check(worker.running, f"{worker.name} exited during the failover:\n{worker.log()[-2000:]}")
        await harness.until_drained(dsn, timeout=90)
        await sink.wait_until(lambda: sink.delivered() >= report.expected, "every committed delivery", timeout=30)
        codes = [await w.stop() for w in procs]
        api_code = await api.stop()
        await sink.stop()
        report.check(api_code == 0, f"the API exited with {api_code}:\n{api.log_path.read_text()[-2000:]}")
        report.check(codes == [0] * workers, f"workers exited with {codes}")
        for worker in procs:
            down, up = worker.logged("worker not ready"), worker.logged("worker ready")
            report.check(up == down + 1, f"{worker.name} ended not ready ({up} ready, {down} not ready)")
        delivered = sink.delivered()
        # An in-doubt batch that survived on the standby is delivered like any other event, to every endpoint.
        survived = {e for e in uncertain if any((e, p) in delivered for p in paths)}
        partial = [e for e in survived if not all((e, p) in delivered for p in paths)]
        report.check(not partial, f"{len(partial)} in-doubt events reached only some endpoints, e.g. {partial[:3]}")
        report.expected |= {(e, p) for e in survived for p in paths}
        report.delivered = delivered
        firsts = [r.at for r in sink.answered() if r.at >= promoted and r.status is not None and 200 <= r.status < 300]
        if firsts:
            report.notes.append(f"first delivery {min(firsts) - promoted:.2f} s after the promotion returned")
        report.notes.append(f"{len(uncertain)} events in batches whose COMMIT got no answer, "
                            f"{len(survived)} of them found committed on the new primary")
        report.notes.append(f"producer errors: {sorted(set(e for m in makers for e in m.errors))[:5]}")
        return harness.finish(report, dsn, sink.answered(), set(), started)
