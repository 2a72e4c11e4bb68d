"""Scenario 11, reduced: the primary is killed, the synchronous standby promoted, and nothing committed is lost."""

from pathlib import Path

import pytest

from chaos import failover


async def test_failover_to_synchronous_standby_loses_nothing(tmp_path: Path) -> None:
    """Workers on a multi-host URL follow the promoted standby by themselves: every event whose COMMIT
    returned is delivered, every duplicate is explained, and each worker is ready again at the end."""
    reason = failover.unavailable()
    if reason:
        pytest.skip(reason)
    report = await failover.run(tmp_path, workers=2, producers=2, before=150, after=150)
    assert report.faults == 1
    assert report.problems == []
    assert report.expected and report.delivered >= report.expected
    assert report.lost == set()
    assert report.duplicates == len(report.explained)
    assert any(note.startswith("first delivery") for note in report.notes)
