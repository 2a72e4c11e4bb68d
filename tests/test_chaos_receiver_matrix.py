"""Scenario 3, reduced: every receiver misbehaviour is recorded right and retried on time, and stalls nothing."""

from datetime import UTC, datetime
from pathlib import Path

from chaos import receiver_matrix
from deliverer.delivery import schedule, send


async def test_misbehaving_receivers_get_the_right_outcome_and_schedule(dsn: str, tmp_path: Path) -> None:
    """Sixteen misbehaviours: the recorded error class, each next attempt's time and the healthy set are exact."""
    report = await receiver_matrix.run(dsn, tmp_path, healthy_events=100)
    assert report.problems == []
    assert report.delivered == report.expected
    assert report.duplicates == 0


class TestRetryAfter:
    def test_seconds_and_http_dates_are_read(self) -> None:
        """Retry-After is read as delta-seconds or as an HTTP date; anything else is ignored."""
        now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
        assert send.parse_retry_after("120", now=now) == 120
        assert send.parse_retry_after("Thu, 01 Jan 2026 12:01:30 GMT", now=now) == 90
        assert send.parse_retry_after("Thu, 01 Jan 2026 11:00:00 GMT", now=now) == 0
        assert [send.parse_retry_after(v, now=now) for v in (None, "", "soon", "-5", "1.5")] == [None] * 5

    def test_retry_after_only_ever_delays_and_is_capped(self) -> None:
        """The schedule is a floor, Retry-After can stretch it up to an hour, and the last attempt stays last."""
        assert schedule.honour_retry_after(5, 120) == 120
        assert schedule.honour_retry_after(30, 2) == 30
        assert schedule.honour_retry_after(5, 86_400) == schedule.RETRY_AFTER_CAP == 3600
        assert schedule.honour_retry_after(None, 60) is None
        assert schedule.honour_retry_after(600, None) == 600
