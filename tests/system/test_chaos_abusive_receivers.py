"""Scenario 10, reduced: many endpoints in one process, a tenth of them slow-loris, endless headers or bodies."""

from pathlib import Path

from chaos import abusive_receivers


async def test_abusive_receivers_keep_memory_bounded_and_end_as_the_matrix_says(dsn: str, tmp_path: Path) -> None:
    """600 endpoints, 60 abusive: every healthy one delivered, every abusive attempt a timeout (slow-loris),
    a protocol error (headers past 64 KiB) or a success (a 200 with an endless body), peak RSS bounded."""
    report = await abusive_receivers.run(dsn, tmp_path, endpoints_count=600)
    assert report.delivered == report.expected
    assert report.problems == []
