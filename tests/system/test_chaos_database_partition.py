"""Scenario 2d, reduced: a partition between the workers and PostgreSQL that drops everything, resets nothing."""

from pathlib import Path

from chaos import database_partition


async def test_a_black_holed_database_is_noticed_within_the_bound_and_loses_nothing(dsn: str, tmp_path: Path) -> None:
    """Workers behind a relay that turns into a black hole for longer than a lease: not ready within
    DELIVERER_DB_TIMEOUT + psycopg's cancel, still running, ready again by themselves once it heals, every
    committed event delivered, every duplicate explained."""
    report = await database_partition.run(dsn, tmp_path, events=600, partition_seconds=8)
    assert report.faults == 1
    assert report.delivered == report.expected
    assert report.duplicates == len(report.explained)
    assert report.problems == []
