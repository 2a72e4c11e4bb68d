"""Scenario 1, reduced: SIGKILLed workers lose nothing, and every duplicate is an interrupted send."""

from pathlib import Path

from chaos import worker_crashes


async def test_killed_workers_lose_nothing_and_every_duplicate_is_explained(dsn: str, tmp_path: Path) -> None:
    """Three processes, two of them killed mid-run and restarted: the delivered set equals the published set."""
    report = await worker_crashes.run(dsn, tmp_path, events=1000, endpoints=2, kill_every=None,
                                      kills_at=(0.3, 0.6), seed=4, timeout=120)
    assert report.faults == 2
    assert report.delivered == report.expected
    assert report.duplicates == len(report.explained)
    assert report.problems == []
