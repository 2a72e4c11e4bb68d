"""Partitions and deliveries made by hand for the retention tests: days long past, and facts dated in them."""

import uuid
from datetime import UTC, datetime, timedelta

import psycopg

from deliverer.storage import partitions
from outbox.ids import new_event_uuid

DAY = timedelta(days=1)

LOG = """INSERT INTO delivery_log (recorded_at, kind, delivery_id, event_id, endpoint_id, org_id, series, attempt,
                                  outcome, next_attempt_at)
         VALUES (%(at)s, %(kind)s, %(delivery_id)s, %(event_id)s, 'ep_a', 'org_a', 1, %(attempt)s,
                 %(outcome)s, %(next)s)"""


def today() -> datetime:
    return partitions.floor(datetime.now(UTC))


def old_day() -> datetime:
    """Midnight 40 days ago: well past a 30-day cutoff."""
    return today() - 40 * DAY


def name(table: str, day: datetime) -> str:
    return f"{table}_p{day:%Y%m%d}"


def names(db: psycopg.Connection) -> set[str]:
    return {p.name for p in partitions.list_partitions(db)}


def old_partitions(db: psycopg.Connection) -> set[str]:
    """Create the partitions of the three days around old_day(), as maintenance did back then."""
    created = partitions.ensure(db, old_day() + 12 * timedelta(hours=1), days_ahead=1)
    return {d.name for d in created}


def delivery(db: psycopg.Connection, at: datetime, *, finished_at: datetime | None = None,
             outcome: str = "succeeded") -> tuple[uuid.UUID, uuid.UUID]:
    """An event created at ``at`` and its delivery: finished at ``finished_at``, or still open (in the queue)."""
    event_id = new_event_uuid(now_ms=int(at.timestamp() * 1000))
    delivery_id = uuid.uuid4()
    db.execute("INSERT INTO outbox_event (id, org_id, event_type, body, created_at) "
               "VALUES (%s, 'org_a', 'webhook.test', '{}', %s)", [event_id, at])
    fact = {"delivery_id": delivery_id, "event_id": event_id}
    db.execute(LOG, fact | {"at": at, "kind": "scheduled", "attempt": 0, "outcome": None, "next": at})
    if finished_at is None:
        db.execute("INSERT INTO delivery_queue (delivery_id, event_id, endpoint_id, org_id, series, attempt, due_at) "
                   "VALUES (%s, %s, 'ep_a', 'org_a', 1, 0, %s)", [delivery_id, event_id, at])
    else:
        db.execute(LOG, fact | {"at": finished_at, "kind": "attempt_finished", "attempt": 1, "outcome": outcome,
                                "next": None})
    return event_id, delivery_id


def finish(db: psycopg.Connection, event_id: uuid.UUID, delivery_id: uuid.UUID) -> None:
    """The open delivery succeeds now: its queue row goes, as the worker's record_results does."""
    db.execute("DELETE FROM delivery_queue WHERE delivery_id = %s", [delivery_id])
    db.execute(LOG, {"at": datetime.now(UTC), "kind": "attempt_finished", "delivery_id": delivery_id,
                     "event_id": event_id, "attempt": 1, "outcome": "succeeded", "next": None})
