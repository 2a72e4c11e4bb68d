"""Scenario 6, reduced: generated failure patterns never break the contract's schedule."""

from chaos import schedule_property
from chaos.schedule_property import Step, model


class TestModel:
    def test_always_failing_follows_the_seed_offsets(self) -> None:
        """Six failures: attempts at 0, 5, 35, 155, 755 and 4355 s, then failed."""
        assert model([Step(500)] * 8) == ([0, 5, 35, 155, 755, 4355], ("failed", 6))

    def test_retry_after_stretches_but_never_shortens_and_is_capped(self) -> None:
        """Retry-After 60 s stretches the 5 s wait, 1 s does not shorten the 30 s one, a day is capped at 1 h."""
        pattern = [Step(503, 60), Step(429, 1), Step(503, 86_400), Step(200)]
        assert model(pattern) == ([0, 60, 90, 3690], ("delivered", 4))

    def test_a_crash_costs_an_attempt_and_a_lease(self) -> None:
        """A worker dying after its claim: the next attempt starts when the lease ends."""
        assert model([Step(0), Step(200)]) == ([0, 30], ("delivered", 2))


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
