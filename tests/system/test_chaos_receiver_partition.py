"""Scenario 9, reduced: receivers whose packets are dropped (no SYN answered, no response sent)."""

from pathlib import Path

from chaos import receiver_partition


async def test_dropped_packets_are_timeouts_on_schedule_within_max_in_flight(dsn: str, tmp_path: Path) -> None:
    """Every attempt at a cut-off endpoint is a timeout, retried on schedule, with at most max_in_flight
    connections open to it (SYN-SENT counted in /proc/net/tcp, held connections at the receiver);
    the healthy endpoint beside them gets every event."""
    report = await receiver_partition.run(dsn, tmp_path, cut_off_events=3, healthy_events=100, timeout=0.5,
                                          delays=(0.5, 0.5))
    assert report.delivered == report.expected
    assert report.duplicates == len(report.explained)
    assert report.problems == []
