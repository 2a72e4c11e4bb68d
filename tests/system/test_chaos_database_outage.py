"""Scenario 2, reduced: workers ride out killed connections and a server restart without losing anything."""

from pathlib import Path

from chaos import database_outage


async def test_terminated_connections_lose_nothing(dsn: str, tmp_path: Path) -> None:
    """Two rounds of pg_terminate_backend on every deliverer connection: all events arrive, workers stay up."""
    report = await database_outage.run_terminate(dsn, tmp_path, events=600, rounds=2)
    assert report.faults >= 2
    assert report.delivered == report.expected
    assert report.duplicates == len(report.explained)
    assert report.problems == []


async def test_server_restart_loses_nothing(tmp_path: Path) -> None:
    """An embedded server stopped and started mid-run: workers report not-ready, reconnect and deliver everything."""
    report = await database_outage.run_restart(tmp_path, events=400, down_seconds=1)
    assert report.faults == 1
    assert report.delivered == report.expected
    assert report.duplicates == len(report.explained)
    assert report.problems == []


async def test_server_crash_loses_nothing(tmp_path: Path) -> None:
    """An embedded server killed the way a crash would (immediate shutdown, then crash recovery) mid-run:
    claims lost with the unflushed WAL are sent again, every duplicate is explained, nothing is lost."""
    report = await database_outage.run_restart(tmp_path, events=400, down_seconds=1, crash=True)
    assert report.faults == 1
    assert report.delivered == report.expected
    assert report.duplicates == len(report.explained)
    assert report.problems == []
