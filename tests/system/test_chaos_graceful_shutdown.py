"""Scenario 4, reduced: SIGTERM finishes or hands back every send, and the worker exits 0."""

from pathlib import Path

from chaos import graceful_shutdown


async def test_shutdown_finishes_or_hands_back_every_send(dsn: str, tmp_path: Path) -> None:
    """Within the grace sends finish; past it, or on a second SIGTERM, they are handed back and taken over at once."""
    report = await graceful_shutdown.run(dsn, tmp_path, held=5, grace=1.0)
    assert report.problems == []
    assert report.delivered == report.expected
    assert report.duplicates == len(report.explained)
