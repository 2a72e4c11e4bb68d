"""``make chaos``: run every fault scenario at full size and print the summary table.

The database is an embedded PostgreSQL in a temporary directory unless
CHAOS_DATABASE_URL names a server (a fresh database is created and dropped per
scenario there). The server-restart scenario always starts its own embedded
server; the failover scenario builds its own primary and standby. Exits 1 if
any scenario lost a delivery or failed a check.
"""

import argparse
import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

from chaos import (
    abusive_receivers,
    concurrent_producers,
    database_outage,
    database_partition,
    failover,
    graceful_shutdown,
    read_only,
    receiver_matrix,
    receiver_partition,
    schedule_property,
    worker_crashes,
)
from chaos.embedded_postgres import EmbeddedPostgres, database
from chaos.report import Report, table
from deliverer.ops import logsetup as logconfig
from deliverer.security import sealing

Scenario = Callable[[str, Path], Awaitable[Report]]


def scenarios(quick: bool) -> dict[str, tuple[str, Scenario]]:
    """Full size, or the reduced size of the pytest versions with --quick."""
    def crashes(dsn: str, workdir: Path) -> Awaitable[Report]:
        if quick:
            return worker_crashes.run(dsn, workdir, events=1000, endpoints=2, kill_every=None, kills_at=(0.3, 0.6))
        return worker_crashes.run(dsn, workdir, events=20_000, endpoints=3, kill_every=2.0)

    def terminate(dsn: str, workdir: Path) -> Awaitable[Report]:
        return database_outage.run_terminate(dsn, workdir, events=600 if quick else 6000, rounds=2 if quick else 5)

    def restart(dsn: str, workdir: Path) -> Awaitable[Report]:
        return database_outage.run_restart(workdir, events=400 if quick else 4000, down_seconds=1 if quick else 3)

    def crash(dsn: str, workdir: Path) -> Awaitable[Report]:
        return database_outage.run_restart(workdir, events=400 if quick else 4000, down_seconds=1 if quick else 3,
                                           crash=True)

    def abusive(dsn: str, workdir: Path) -> Awaitable[Report]:
        return abusive_receivers.run(dsn, workdir, endpoints_count=600 if quick else 10_000)

    def db_partition(dsn: str, workdir: Path) -> Awaitable[Report]:
        return database_partition.run(dsn, workdir, events=600 if quick else 3000,
                                      partition_seconds=8 if quick else 10)

    def matrix(dsn: str, workdir: Path) -> Awaitable[Report]:
        return receiver_matrix.run(dsn, workdir, healthy_events=100 if quick else 500)

    def shutdown(dsn: str, workdir: Path) -> Awaitable[Report]:
        return graceful_shutdown.run(dsn, workdir, held=5 if quick else 50, grace=1.0 if quick else 2.0)

    def producers(dsn: str, workdir: Path) -> Awaitable[Report]:
        return concurrent_producers.run(dsn, workdir, threads=8, transactions=40 if quick else 400)

    async def schedule(dsn: str, workdir: Path) -> Report:
        return await asyncio.to_thread(schedule_property.run, dsn, examples=40 if quick else 300)

    def readonly(dsn: str, workdir: Path) -> Awaitable[Report]:
        return read_only.run(dsn, workdir, events=400 if quick else 4000, read_only_seconds=1 if quick else 3)

    def partition(dsn: str, workdir: Path) -> Awaitable[Report]:
        if quick:
            return receiver_partition.run(dsn, workdir, cut_off_events=3, healthy_events=100, timeout=0.5,
                                          delays=(0.5, 0.5))
        return receiver_partition.run(dsn, workdir)

    def fail_over(dsn: str, workdir: Path) -> Awaitable[Report]:
        if quick:
            return failover.run(workdir, workers=2, producers=2, before=150, after=150)
        return failover.run(workdir, workers=3, producers=2, before=1000, after=1000)

    return {
        "1": ("worker crashes", crashes), "2a": ("pg_terminate_backend", terminate),
        "2b": ("server restart", restart), "2c": ("server crash", crash),
        "2d": ("partition to the database", db_partition),
        "3": ("receiver matrix", matrix), "4": ("graceful shutdown", shutdown),
        "5": ("concurrent producers", producers), "6": ("schedule property", schedule),
        "8": ("read-only database", readonly), "9": ("receivers behind a partition", partition),
        "10": ("many endpoints, abusive receivers", abusive),
        "11": ("failover to a synchronous standby", fail_over),
    }


@contextlib.contextmanager
def server() -> Iterator[str]:
    url = os.environ.get("CHAOS_DATABASE_URL")
    if url:
        yield url
        return
    with EmbeddedPostgres() as pg:
        yield pg.uri


async def main(argv: list[str]) -> int:
    sealing.use_development_key()
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the reduced sizes of the pytest versions")
    parser.add_argument("--only", action="append",
                        help="run only this scenario (1, 2a, 2b, 2c, 2d, 3, 4, 5, 6, 8, 9, 10, 11); repeatable")
    args = parser.parse_args(argv)
    known = scenarios(args.quick)
    unknown = sorted(set(args.only or ()) - known.keys())
    if unknown:
        parser.error(f"no scenario {', '.join(unknown)}: choose from {', '.join(known)}; repeat --only for several")
    # Scenarios 3 and 6 run in-process workers whose failed deliveries are the point, not news.
    logconfig.configure("error", "console")
    chosen = {k: v for k, v in known.items() if not args.only or k in args.only}
    workdir = Path(tempfile.mkdtemp(prefix="chaos-logs-"))
    reports: list[Report] = []
    started = time.monotonic()
    with server() as url:
        for key, (name, scenario) in chosen.items():
            print(f"chaos: scenario {key}, {name} ...", flush=True)
            scenario_dir = workdir / key
            scenario_dir.mkdir()
            begun = time.monotonic()
            with database(url) as dsn:
                try:
                    report = await scenario(dsn, scenario_dir)
                except Exception as exc:
                    report = Report(f"{key} {name}", wall_s=time.monotonic() - begun,
                                    problems=[f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"])
            reports.append(report)
            status = "ok" if not report.problems else "FAILED"
            print(f"chaos: scenario {key} {status} in {report.wall_s:.1f} s", flush=True)
    print()
    print(table(reports))
    print(f"\ntotal wall time {time.monotonic() - started:.1f} s; "
          "every scenario ended with the log integrity check (append-only, projection = fold of the log)")
    for report in reports:
        for note in report.notes:
            print(f"  {report.scenario}: {note}")
        if report.explained:
            causes = Counter(line.split(": ", 1)[1] for line in report.explained)
            print(f"  {report.scenario}: {len(report.explained)} duplicates, each explained:")
            for cause, count in sorted(causes.items()):
                print(f"    {count:>5} x {cause}")
    failed = [r for r in reports if r.problems]
    for report in failed:
        print(f"\n{report.scenario} FAILED:")
        for problem in report.problems:
            print(f"  - {problem[:4000]}")
    if failed:
        print(f"\nworker logs kept in {workdir}")
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
