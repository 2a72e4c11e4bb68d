"""Scenario 8, reduced: a database that stops accepting writes, then accepts them again."""

from pathlib import Path

from chaos import read_only


async def test_read_only_database_loses_nothing_and_workers_recover_by_themselves(dsn: str, tmp_path: Path) -> None:
    """Producers are refused before writing (transaction usable), workers go not-ready, and once writes are
    allowed again (no session touched) they are ready again by themselves and every committed event arrives."""
    report = await read_only.run(dsn, tmp_path, events=400, read_only_seconds=1)
    assert report.faults == 1
    assert report.delivered == report.expected
    assert report.duplicates == len(report.explained)
    assert report.problems == []
