"""Credit-balance alerts: one credits.low_balance per downward crossing, one credits.depleted per reaching zero."""

import itertools
import json
import random
import threading
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import outbox
from outbox import catalog
from outbox.credits import Crossings, balance_events, crossings, estimated_jobs_remaining, percentage_remaining

NOW = datetime(2024, 11, 23, 10, 0, tzinfo=UTC)
ORG = "org_xyz789"

# The application's own balance table, as a test stand-in.
CREATE_BALANCE = """
CREATE TABLE credit_balance (org_id text PRIMARY KEY, balance integer NOT NULL, version integer NOT NULL)
"""
# The two locking patterns of outbox.credits' contract.
DEBIT_RETURNING = """
UPDATE credit_balance SET balance = balance + %(delta)s, version = version + 1 WHERE org_id = %(org_id)s
RETURNING balance - %(delta)s, balance, version
"""
READ_FOR_UPDATE = "SELECT balance FROM credit_balance WHERE org_id = %(org_id)s FOR UPDATE"
WRITE_BALANCE = """
UPDATE credit_balance SET balance = %(balance)s, version = version + 1 WHERE org_id = %(org_id)s RETURNING version
"""


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


def one(conn: psycopg.Connection, query: str, params: dict[str, Any]) -> tuple[Any, ...]:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row


def low_and_depleted(db: psycopg.Connection) -> list[tuple[str, dict[str, Any]]]:
    return [(t, json.loads(body)["data"]) for t, body in db.execute(
        "SELECT event_type, body FROM outbox_event WHERE org_id = %s ORDER BY id", [ORG])]


class TestInTheDatabase:
    def test_events_commit_and_roll_back_with_the_balance(self, dsn: str, db: psycopg.Connection) -> None:
        """The alert exists if and only if the balance change it describes commits."""
        db.execute(CREATE_BALANCE)
        db.execute("INSERT INTO credit_balance VALUES (%s, 150, 0)", [ORG])
        with psycopg.connect(dsn) as conn:
            old, new, _ = one(conn, DEBIT_RETURNING, {"delta": -100, "org_id": ORG})
            ids = outbox.publish_balance_change(conn, org_id=ORG, old_balance=old, new_balance=new, threshold=100,
                                                plan_allowance=2000, average_job_cost=2, jobs_queued=0)
            assert len(ids) == 1
            conn.rollback()
            assert low_and_depleted(db) == []
            old, new, _ = one(conn, DEBIT_RETURNING, {"delta": -100, "org_id": ORG})
            outbox.publish_balance_change(conn, org_id=ORG, old_balance=old, new_balance=new, threshold=100,
                                          plan_allowance=2000, average_job_cost=2, jobs_queued=0)
            conn.commit()
        assert [t for t, _ in low_and_depleted(db)] == ["credits.low_balance"]
        assert db.execute("SELECT balance FROM credit_balance").fetchone() == (50,)

    async def test_async_connection(self, dsn: str, db: psycopg.Connection) -> None:
        """apublish_balance_change publishes both events of a change to zero on an AsyncConnection."""
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            ids = await outbox.apublish_balance_change(
                conn, org_id=ORG, old_balance=150, new_balance=0, threshold=100, plan_allowance=2000,
                average_job_cost=2, jobs_queued=3, now=NOW)
            assert await outbox.apublish_balance_change(
                conn, org_id=ORG, old_balance=0, new_balance=0, threshold=100, plan_allowance=2000,
                average_job_cost=2, jobs_queued=3, now=NOW) == []
            await conn.commit()
        assert len(ids) == 2
        assert dict(low_and_depleted(db)) == {
            "credits.low_balance": {"org_id": ORG, "current_balance": 0, "threshold": 100,
                                    "percentage_remaining": 0.0, "estimated_jobs_remaining": 0,
                                    "timestamp": "2024-11-23T10:00:00Z"},
            "credits.depleted": {"org_id": ORG, "depleted_at": "2024-11-23T10:00:00Z", "jobs_queued": 3},
        }

    def test_concurrent_changes_of_one_org_send_each_crossing_once(self, dsn: str, db: psycopg.Connection) -> None:
        """Eight threads changing one balance at once publish exactly the crossings of the order the lock imposed."""
        threads, steps, start, threshold = 8, 30, 120, 100
        db.execute(CREATE_BALANCE)
        db.execute("INSERT INTO credit_balance VALUES (%s, %s, 0)", [ORG, start])
        committed: list[tuple[int, int, int]] = []  # (version, old, new) of each committed change
        lock = threading.Lock()
        barrier = threading.Barrier(threads)
        errors: list[BaseException] = []

        class RollBack(Exception):
            pass

        def plan(n: int) -> list[int]:
            """Debits of 3-12 credits with a top-up of 20-45 every sixth change; the same on every run."""
            rng = random.Random(n)
            return [rng.randint(20, 45) if i % 6 == 5 else -rng.randint(3, 12) for i in range(steps)]

        def rolls_back(i: int) -> bool:
            return i % 7 == 3

        # Whatever order the threads run in, the balance ends at the same value, below zero,
        # so it crossed the threshold and reached zero at least once.
        final = start + sum(d for n in range(threads) for i, d in enumerate(plan(n)) if not rolls_back(i))
        assert final < 0

        def work(n: int) -> None:
            try:
                with psycopg.connect(dsn) as conn:
                    barrier.wait(timeout=30)
                    for i, delta in enumerate(plan(n)):
                        try:
                            with conn.transaction():
                                if n % 2:
                                    old, new, version = one(conn, DEBIT_RETURNING, {"delta": delta, "org_id": ORG})
                                else:
                                    (old,) = one(conn, READ_FOR_UPDATE, {"org_id": ORG})
                                    new = old + delta
                                    (version,) = one(conn, WRITE_BALANCE, {"balance": new, "org_id": ORG})
                                outbox.publish_balance_change(conn, org_id=ORG, old_balance=old, new_balance=new,
                                                              threshold=threshold, plan_allowance=1000,
                                                              average_job_cost=1, jobs_queued=0)
                                if rolls_back(i):
                                    raise RollBack
                        except RollBack:
                            continue
                        with lock:
                            committed.append((version, old, new))
            except BaseException as exc:
                errors.append(exc)
                barrier.abort()

        workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=120)
        assert not errors, errors
        assert not any(worker.is_alive() for worker in workers)

        committed.sort()
        # The lock made one chain: versions 1..N with each change starting where the one before ended.
        assert [v for v, _, _ in committed] == list(range(1, len(committed) + 1))
        balances = [start] + [new for _, _, new in committed]
        assert [old for _, old, _ in committed] == balances[:-1]
        assert db.execute("SELECT balance FROM credit_balance").fetchone() == (balances[-1],)

        expected_lows = Counter(new for _, old, new in committed if old >= threshold > new)
        expected_depleted = sum(1 for _, old, new in committed if old > 0 >= new)
        sent = low_and_depleted(db)
        assert Counter(d["current_balance"] for t, d in sent if t == "credits.low_balance") == expected_lows
        assert sum(1 for t, _ in sent if t == "credits.depleted") == expected_depleted
        # The plan guarantees the balance ends below zero, so at least one of each was due.
        assert balances[-1] == final
        assert expected_lows and expected_depleted
