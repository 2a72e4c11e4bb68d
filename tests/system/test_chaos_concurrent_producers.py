"""Scenario 5, reduced: under concurrent commits and rollbacks the delivered set is the committed set."""

from pathlib import Path

from chaos import concurrent_producers


async def test_delivered_set_equals_committed_set(dsn: str, tmp_path: Path) -> None:
    """Eight threads commit and roll back at random, some with dedupe keys: exactly the committed events arrive."""
    report = await concurrent_producers.run(dsn, tmp_path, threads=8, transactions=40, seed=5)
    assert report.faults > 0
    assert report.delivered == report.expected
    assert report.duplicates == 0
    assert report.problems == []
