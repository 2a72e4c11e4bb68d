"""The schedule model of scenario 6 (chaos/schedule_property.py) against the contract's table, without running it.

The scenario, generated patterns against a worker and a database: tests/system/test_chaos_schedule_property.py.
"""

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
