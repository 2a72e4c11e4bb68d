"""Credit-balance alerts in the application's transaction: they commit and roll back with the balance change.

The pure crossing rules are in tests/unit/test_credits.py; here the two locking
patterns of outbox.credits' contract run against a real balance table.
"""

import json
import random
import threading
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import psycopg

import outbox

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
