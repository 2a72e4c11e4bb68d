"""Credit-balance alerts: ``credits.low_balance`` and ``credits.depleted``, decided from one balance change.

The promise: call :func:`publish_balance_change` in the transaction that
changes an org's balance, with the balance before and after that change, and

- ``credits.low_balance`` is published once per downward crossing of the
  threshold, the change that takes the balance from ``threshold`` or more to
  below it. Further debits below the threshold send nothing; after the balance
  is back at or above the threshold (a top-up), the next crossing sends it again.
- ``credits.depleted`` is published when the balance reaches zero: the change
  that takes it from above zero to zero or less. Again after a top-up above zero.
- One change can do both (150 to 0 with a threshold of 100): then both events
  are published, ``credits.low_balance`` first.

Like :func:`outbox.publish`, it writes on the caller's connection and never
commits: the events exist if and only if the balance change commits.

**The caller's side of the contract: lock the balance row.** The helper keeps no
state of its own; it looks only at the ``(old, new)`` pair it is given. That is
exactly right when the pairs of all transactions of an org form one chain, each
``old`` being the ``new`` of the change committed before it, which holds when
``old`` is read under the row lock that the change itself takes and holds until
commit. Either of these does it, under READ COMMITTED or stricter::

    -- one statement: the row is locked, and RETURNING sees the latest committed balance
    UPDATE credit_balance SET balance = balance - %(cost)s WHERE org_id = %(org_id)s
    RETURNING balance + %(cost)s AS old_balance, balance AS new_balance

    -- or read with FOR UPDATE, then write, in the same transaction
    SELECT balance FROM credit_balance WHERE org_id = %(org_id)s FOR UPDATE

Then two concurrent debits of one org are serialised by the lock: the second
sees the first one's committed balance as its ``old``, so they cannot both
publish a crossing, nor both miss it. A plain ``SELECT balance`` followed by an
``UPDATE`` is NOT enough: both transactions can read the same old balance.

Changing an org's threshold is not a balance change and publishes nothing; the
next crossing of the new threshold does.
"""

from dataclasses import dataclass
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any

from outbox import events
from outbox.errors import InvalidPayload
from outbox.publish import Event, apublish_many, publish_many

Number = events.Number


@dataclass(frozen=True)
class Crossings:
    """What one balance change crossed."""

    low_balance: bool
    depleted: bool


def crossings(old_balance: Number, new_balance: Number, threshold: Number) -> Crossings:
    """Whether going from ``old_balance`` to ``new_balance`` falls below ``threshold``, and reaches zero."""
    old = events.number("old_balance", old_balance, minimum=None)
    new = events.number("new_balance", new_balance, minimum=None)
    limit = events.number("threshold", threshold)
    if limit <= 0:
        raise InvalidPayload(f"threshold must be above zero, got {limit}")
    return Crossings(low_balance=old >= limit > new, depleted=old > 0 >= new)


def percentage_remaining(balance: Number, plan_allowance: Number) -> float:
    """``balance`` as a percentage of the plan's allowance, rounded to two decimals; never below 0."""
    current = Fraction(events.number("balance", balance, minimum=None))
    allowance = Fraction(events.number("plan_allowance", plan_allowance))
    if allowance <= 0:
        raise InvalidPayload(f"plan_allowance must be above zero, got {plan_allowance}")
    return float(round(max(current, Fraction(0)) * 100 / allowance, 2))


def estimated_jobs_remaining(balance: Number, average_job_cost: Number) -> int:
    """How many jobs of the average cost the balance still pays for; never below 0."""
    current = Fraction(events.number("balance", balance, minimum=None))
    cost = Fraction(events.number("average_job_cost", average_job_cost))
    if cost <= 0:
        raise InvalidPayload(f"average_job_cost must be above zero, got {average_job_cost}")
    return int(max(current, Fraction(0)) // cost)


def balance_events(*, org_id: str, old_balance: Number, new_balance: Number, threshold: Number,
                   plan_allowance: Number, average_job_cost: Number, jobs_queued: int,
                   now: datetime) -> list[Event]:
    """The events one balance change publishes (none, one or both), without writing anything.

    ``plan_allowance`` is the credits of the org's plan (``percentage_remaining``
    is the new balance as a share of it); ``average_job_cost`` turns the balance
    into ``estimated_jobs_remaining``; ``jobs_queued`` is sent with
    ``credits.depleted``; ``now`` is the events' time.
    """
    # Everything is checked on every call, not only on a crossing, so a wrong argument fails on the first debit.
    events.check_org_id(org_id)
    events.format_timestamp(now)
    crossed = crossings(old_balance, new_balance, threshold)
    percentage = percentage_remaining(new_balance, plan_allowance)
    jobs_left = estimated_jobs_remaining(new_balance, average_job_cost)
    queued = events.count("jobs_queued", jobs_queued)
    result = []
    if crossed.low_balance:
        result.append(events.credits_low_balance(
            org_id=org_id, current_balance=new_balance, threshold=threshold, percentage_remaining=percentage,
            estimated_jobs_remaining=jobs_left, timestamp=now,
        ))
    if crossed.depleted:
        result.append(events.credits_depleted(org_id=org_id, depleted_at=now, jobs_queued=queued))
    return result


def publish_balance_change(conn: Any, *, org_id: str, old_balance: Number, new_balance: Number,
                           threshold: Number, plan_allowance: Number, average_job_cost: Number,
                           jobs_queued: int, now: datetime | None = None) -> list[str]:
    """Publish what the change from ``old_balance`` to ``new_balance`` crossed; return the event ids.

    Call it in the transaction that changes the balance, with both balances read
    under that change's row lock (see the module's documentation). ``now``
    defaults to the current time. Nothing is written when nothing was crossed (the connection is still checked).
    """
    found = balance_events(
        org_id=org_id, old_balance=old_balance, new_balance=new_balance, threshold=threshold,
        plan_allowance=plan_allowance, average_job_cost=average_job_cost, jobs_queued=jobs_queued,
        now=now or datetime.now(UTC),
    )
    return publish_many(conn, found)


async def apublish_balance_change(conn: Any, *, org_id: str, old_balance: Number, new_balance: Number,
                                  threshold: Number, plan_allowance: Number, average_job_cost: Number,
                                  jobs_queued: int, now: datetime | None = None) -> list[str]:
    """:func:`publish_balance_change` for psycopg ``AsyncConnection`` and SQLAlchemy's async connections."""
    found = balance_events(
        org_id=org_id, old_balance=old_balance, new_balance=new_balance, threshold=threshold,
        plan_allowance=plan_allowance, average_job_cost=average_job_cost, jobs_queued=jobs_queued,
        now=now or datetime.now(UTC),
    )
    return await apublish_many(conn, found)
