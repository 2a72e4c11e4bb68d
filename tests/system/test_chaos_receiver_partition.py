"""Scenario 9, reduced: receivers whose packets are dropped (no SYN answered, no response sent)."""

from pathlib import Path

from chaos import receiver_partition


async def test_dropped_packets_are_timeouts_on_schedule_within_max_in_flight(dsn: str, tmp_path: Path) -> None:
    """Every attempt at a cut-off endpoint is a timeout, retried on schedule, with at most max_in_flight
    connections held open at the never-answering receiver; the healthy endpoint beside them gets every
    event. (The SYN-SENT count is checked by make chaos only: see receiver_partition.run.)"""
    report = await receiver_partition.run(dsn, tmp_path, cut_off_events=3, healthy_events=100, timeout=0.5,
                                          delays=(0.5, 0.5), check_syn_sent=False)
    assert report.delivered == report.expected
    assert report.duplicates == len(report.explained)
    assert report.problems == []
