"""Scenario 3, reduced: every receiver misbehaviour is recorded right and retried on time, and stalls nothing."""

from pathlib import Path

from chaos import receiver_matrix


async def test_misbehaving_receivers_get_the_right_outcome_and_schedule(dsn: str, tmp_path: Path) -> None:
    """Sixteen misbehaviours: the recorded error class, each next attempt's time and the healthy set are exact."""
    report = await receiver_matrix.run(dsn, tmp_path, healthy_events=100)
    assert report.problems == []
    assert report.delivered == report.expected
    assert report.duplicates == 0
