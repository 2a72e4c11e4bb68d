"""Scenario 6, reduced: generated failure patterns never break the contract's schedule."""

from chaos import schedule_property
from chaos.schedule_property import Step


def test_generated_patterns_follow_the_schedule(dsn: str) -> None:
    """Forty generated patterns: at most six attempts, exact gaps, and the final state the pattern implies."""
    report = schedule_property.run(dsn, examples=40)
    assert report.problems == []
    assert report.delivered == report.expected


class TestEdgePatterns:
    async def test_six_crashes_fail_the_delivery_without_a_seventh_attempt(self, dsn: str) -> None:
        """Six claims whose worker dies: attempts a lease apart, then failed, and the receiver never called."""
        checked = await schedule_property.check_pattern(dsn, [Step(0)] * 6, 0)
        assert checked.problems == []
        assert checked.final == ("failed", 6)

    async def test_retry_after_on_the_last_attempt_schedules_nothing(self, dsn: str) -> None:
        """A 503 with Retry-After on attempt six still ends the delivery as failed."""
        checked = await schedule_property.check_pattern(dsn, [Step(500)] * 5 + [Step(503, 60)], 1)
        assert checked.problems == []
        assert checked.final == ("failed", 6)

    async def test_success_after_mixed_failures_is_delivered_once(self, dsn: str) -> None:
        """Crash, 429 with Retry-After, 500, then 200: delivered on attempt four at 0, 30, 90 and 210 s."""
        checked = await schedule_property.check_pattern(dsn, [Step(0), Step(429, 60), Step(500), Step(200)], 2)
        assert checked.problems == []
        assert checked.final == ("delivered", 4)
        assert schedule_property.model([Step(0), Step(429, 60), Step(500), Step(200)])[0] == [0, 30, 90, 210]
