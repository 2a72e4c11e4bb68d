"""The producer side of the webhook outbox.

Call :func:`publish` inside your own database transaction, next to the business
change the event describes::

    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE jobs SET status = 'completed' WHERE id = %s", [job_id])
        outbox.publish(conn, "job.completed", data, org_id=org_id)
    # committed: the event will be delivered. Rolled back: it never existed.
"""

from outbox import credits, events, jobs
from outbox.catalog import EVENT_TYPES
from outbox.credits import apublish_balance_change, publish_balance_change
from outbox.errors import (
    InvalidPayload,
    MissingOrgId,
    OutboxError,
    PayloadTooLarge,
    UnknownEventType,
    UnsupportedConnection,
    WritesRefused,
)
from outbox.ids import event_public_id, parse_event_id
from outbox.jobs import JobError, JobResult, job_finished
from outbox.publish import (
    MAX_BODY_BYTES,
    Event,
    apublish,
    apublish_many,
    publish,
    publish_many,
)

__all__ = [
    "EVENT_TYPES",
    "MAX_BODY_BYTES",
    "Event",
    "InvalidPayload",
    "JobError",
    "JobResult",
    "MissingOrgId",
    "OutboxError",
    "PayloadTooLarge",
    "UnknownEventType",
    "UnsupportedConnection",
    "WritesRefused",
    "apublish",
    "apublish_balance_change",
    "apublish_many",
    "credits",
    "event_public_id",
    "events",
    "job_finished",
    "jobs",
    "parse_event_id",
    "publish",
    "publish_balance_change",
    "publish_many",
]
