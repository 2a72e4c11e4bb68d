"""Credit-balance alerts: one credits.low_balance per downward crossing, one credits.depleted per reaching zero."""

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import outbox
from outbox import catalog
from outbox.credits import Crossings, balance_events, crossings, estimated_jobs_remaining, percentage_remaining

NOW = datetime(2024, 11, 23, 10, 0, tzinfo=UTC)
ORG = "org_xyz789"


def changes(old: int, new: int, threshold: int = 100, **overrides: Any) -> list[outbox.Event]:
    arguments = {"org_id": ORG, "old_balance": old, "new_balance": new, "threshold": threshold,
                 "plan_allowance": 2000, "average_job_cost": 2, "jobs_queued": 5, "now": NOW} | overrides
    return balance_events(**arguments)


class TestOneChange:
    def test_docs_examples(self) -> None:
        """150 to 50 (plan of 2000, 2 credits a job), then 50 to 0 with 5 jobs queued, give the docs' payloads."""
        (low,) = changes(150, 50)
        assert (low.event_type, low.org_id) == ("credits.low_balance", ORG)
        assert low.data == {"org_id": ORG, "current_balance": 50, "threshold": 100, "percentage_remaining": 2.5,
                            "estimated_jobs_remaining": 25, "timestamp": "2024-11-23T10:00:00Z"}
        (depleted,) = changes(50, 0)
        assert depleted.event_type == "credits.depleted"
        assert depleted.data == {"org_id": ORG, "depleted_at": "2024-11-23T10:00:00Z", "jobs_queued": 5}

    @pytest.mark.parametrize(("old", "new", "expected"), [
        (150, 101, []),
        (150, 100, []),                 # at the threshold is not below it
        (100, 99, ["credits.low_balance"]),
        (99, 50, []),                   # already below: no second alert
        (50, 150, []),                  # top-ups send nothing
        (50, 0, ["credits.depleted"]),
        (150, 0, ["credits.low_balance", "credits.depleted"]),
        (0, 0, []),
        (0, -5, []),                    # already depleted
        (10, -5, ["credits.depleted"]),
        (150, -5, ["credits.low_balance", "credits.depleted"]),
        (-5, 150, []),
    ])
    def test_which_events(self, old: int, new: int, expected: list[str]) -> None:
        """A change publishes low_balance when it takes the balance below the threshold, depleted when to zero."""
        assert [e.event_type for e in changes(old, new)] == expected

    def test_negative_balance_reports_no_negative_estimates(self) -> None:
        """An overdrawn balance is sent as it is, with 0 % and 0 jobs remaining."""
        low, _ = changes(150, -5)
        assert (low.data["current_balance"], low.data["percentage_remaining"], low.data["estimated_jobs_remaining"]) \
            == (-5, 0.0, 0)

    @pytest.mark.parametrize(("overrides", "message"), [
        ({"threshold": 0}, "threshold must be above zero"),
        ({"plan_allowance": 0}, "plan_allowance must be above zero"),
        ({"average_job_cost": 0}, "average_job_cost must be above zero"),
        ({"jobs_queued": -1}, "jobs_queued must be a non-negative integer"),
        ({"org_id": "xyz"}, "org_id must be a string like org_"),
        ({"now": datetime(2024, 11, 23)}, "no time zone"),
    ])
    def test_bad_arguments_fail_even_without_a_crossing(self, overrides: dict[str, Any], message: str) -> None:
        """Wrong arguments raise InvalidPayload on the first call, not only on the rare call that crosses."""
        with pytest.raises(outbox.InvalidPayload, match=message):
            changes(300, 250, **overrides)


@dataclass
class Chain:
    """A run of balance changes, each from the previous balance, as the row lock makes them."""

    start: int
    threshold: int
    deltas: list[int]

    def balances(self) -> list[int]:
        result = [self.start]
        for delta in self.deltas:
            result.append(result[-1] + delta)
        return result

    def events(self) -> list[list[outbox.Event]]:
        """The events of each change, in order."""
        b = self.balances()
        return [changes(old, new, self.threshold, plan_allowance=5000, average_job_cost=3)
                for old, new in itertools.pairwise(b)]


chains = st.builds(
    Chain,
    start=st.integers(-50, 500),
    threshold=st.integers(1, 300),
    deltas=st.lists(st.integers(-120, 120), max_size=60),
)


class TestProperties:
    @settings(deadline=None)
    @given(chains)
    def test_low_balance_once_per_stay_below_the_threshold(self, chain: Chain) -> None:
        """Between two low_balance events the balance was at or above the threshold, and no stay below goes unsent."""
        balances, sent = chain.balances(), chain.events()
        armed = balances[0] >= chain.threshold  # the next fall below must be announced
        for i, change in enumerate(sent):
            new = balances[i + 1]
            lows = [e for e in change if e.event_type == "credits.low_balance"]
            if new >= chain.threshold:
                assert not lows
                armed = True
            elif armed:
                assert len(lows) == 1, f"crossing below {chain.threshold} at change {i} was not announced"
                armed = False
            else:
                assert not lows, f"second alert at change {i} without the balance going back up"

    @settings(deadline=None)
    @given(chains)
    def test_depleted_once_per_reaching_zero(self, chain: Chain) -> None:
        """depleted is sent when the balance reaches zero from above, and again only after it went above zero."""
        balances, sent = chain.balances(), chain.events()
        for i, change in enumerate(sent):
            depleted = [e for e in change if e.event_type == "credits.depleted"]
            assert len(depleted) == (1 if balances[i] > 0 >= balances[i + 1] else 0)

    @settings(deadline=None)
    @given(chains)
    def test_every_event_is_valid_and_describes_the_new_balance(self, chain: Chain) -> None:
        """Each event passes the catalog; low_balance's figures are the new balance's, within their bounds."""
        balances = chain.balances()
        for i, change in enumerate(chain.events()):
            assert len(change) <= 2
            for event in change:
                catalog.validate(event.event_type, event.data, event.org_id)
                if event.event_type != "credits.low_balance":
                    continue
                new = balances[i + 1]
                data = event.data
                assert data["current_balance"] == new and data["threshold"] == chain.threshold
                assert 0 <= data["percentage_remaining"] <= 100 * max(new, 0) / 5000 + 0.005
                jobs = data["estimated_jobs_remaining"]
                assert jobs * 3 <= max(new, 0) < (jobs + 1) * 3

    @settings(deadline=None)
    @given(st.integers(-10**6, 10**6), st.integers(-10**6, 10**6), st.integers(1, 10**6))
    def test_crossings_match_their_definition(self, old: int, new: int, threshold: int) -> None:
        """crossings() is: from at-or-above to below the threshold, and from above zero to zero or less."""
        assert crossings(old, new, threshold) == Crossings(old >= threshold > new, old > 0 >= new)

    @settings(deadline=None)
    @given(st.integers(-10**9, 10**9), st.integers(1, 10**9), st.integers(1, 10**4))
    def test_derived_figures(self, balance: int, allowance: int, cost: int) -> None:
        """percentage_remaining is the balance's share of the plan rounded to 0.01; jobs are whole jobs it pays for."""
        assert abs(percentage_remaining(balance, allowance) - max(balance, 0) * 100 / allowance) <= 0.005 + 1e-9
        assert estimated_jobs_remaining(balance, cost) == max(balance, 0) // cost
