"""Retention as operators run it: the `deliverer retention` command, a running deliverer, and the CronJob.

In-process partition maintenance is tested in tests/integration/test_retention.py.
"""

from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from deliverer.cli.commands import cmd_retention
from deliverer.cli.parser import build_parser
from deliverer.storage import partitions, schema
from tests.support.deploy import OVERLAYS, find, needs_kubectl, render
from tests.support.partitions import DAY, delivery, name, names, old_day, old_partitions, today
from tests.support.processes import WorkerProcess, deliverer


async def test_a_running_deliverer_creates_missing_partitions(dsn: str, db: psycopg.Connection,
                                                              tmp_path: Path) -> None:
    """`deliverer run` maintains partitions by itself: days missing ahead reappear shortly after it starts."""
    last = today() + partitions.DAYS_AHEAD * DAY
    schema.migrate(db)
    for table in partitions.TABLES:
        db.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name(table, last))))
    worker = WorkerProcess(dsn, "maintainer", tmp_path)
    await worker.start()
    try:
        await worker.wait_logged("partition created", times=2)
    finally:
        assert await worker.stop() == 0
    assert {name(t, last) for t in partitions.TABLES} <= names(db)


def test_cli_retention_prints_what_it_dropped_kept_and_skipped(dsn: str, db: psycopg.Connection) -> None:
    """The command prints one line per dropped or skipped partition and totals for the rest; exit status 0."""
    old = old_partitions(db)
    delivery(db, old_day() + 12 * timedelta(hours=1))
    dry = deliverer(dsn, "retention", "--older-than", "30d", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert names(db) >= old
    assert sum(line.startswith("would drop") for line in dry.stdout.splitlines()) == 4

    result = deliverer(dsn, "retention", "--older-than", "30d")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("cutoff ")
    assert sorted(line.split()[1] for line in lines if line.startswith("dropped")) == sorted(
        old - {name(t, old_day()) for t in partitions.TABLES})
    assert [line.split()[1] for line in lines if line.startswith("skipped")] == [
        name("delivery_log", old_day()), name("outbox_event", old_day())]
    assert f"{'kept':<12} {partitions.DAYS_AHEAD + 2} outbox_event partitions newer than the cutoff" in lines
    assert deliverer(dsn, "rebuild-projections", "--check").returncode == 0


def test_cli_refuses_a_bad_or_too_short_cutoff_unless_forced(dsn: str) -> None:
    """A duration it cannot read, or under a day without --force, exits 2 with a message saying what to do."""
    bad = deliverer(None, "retention", "--older-than=30 days")
    assert bad.returncode == 2
    assert "--older-than: expected a duration like 30d, 12h or 90m" in bad.stderr
    short = deliverer(dsn, "retention", "--older-than", "12h")
    assert short.returncode == 2
    assert "less than a day" in short.stderr and "--force" in short.stderr
    forced = deliverer(dsn, "retention", "--older-than", "12h", "--force", "--dry-run")
    assert forced.returncode == 0, forced.stderr


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_cronjob_runs_retention_daily_with_a_cutoff_the_cli_accepts(overlay: str) -> None:
    """Every overlay has the retention CronJob; its arguments parse, without --force or --dry-run, and never overlap."""
    [cron] = find(render(overlay), "CronJob", "docextract-webhooks-retention")
    [container] = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    args = build_parser().parse_args(container["args"])
    assert args.func is cmd_retention and not args.force and not args.dry_run
    assert partitions.parse_duration(args.older_than) >= partitions.MIN_OLDER_THAN
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
