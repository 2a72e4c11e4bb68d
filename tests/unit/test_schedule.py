"""The retry schedule as arithmetic: the contract's delays, jitter, and how far Retry-After may move them.

Walking a real delivery through the schedule with a fake clock is in tests/integration/test_schedule.py.
"""

import random
from datetime import UTC, datetime

import pytest

from deliverer.delivery import schedule, send


class TestRetryDelay:
    def test_seed_delays(self) -> None:
        """After attempts 1-5 the waits are 5 s, 30 s, 2 min, 10 min, 1 h; after the 6th there is none."""
        assert [schedule.retry_delay(n) for n in range(1, 7)] == [5, 30, 120, 600, 3600, None]
        assert schedule.max_attempts() == 6

    def test_jitter_stays_within_its_fraction(self) -> None:
        """Jitter spreads a delay by at most ±jitter of itself."""
        rng = random.Random(7)
        values = [schedule.retry_delay(2, jitter=0.1, rng=rng) for _ in range(200)]
        assert all(27 <= v <= 33 for v in values)
        assert len(set(values)) > 100

    def test_attempts_start_at_one(self) -> None:
        """Attempt 0 is a programming error, not a silent default."""
        with pytest.raises(ValueError, match="numbered from 1"):
            schedule.retry_delay(0)


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
