"""Test events: the customer docs' ``webhook.test`` ping, sent to one endpoint now.

The event goes through the real delivery path (the outbox, the delivery log,
the same signing and sending code as every delivery) but is leased to the
sender straight away, so the answer does not wait behind queued deliveries. A
failed test is not retried: the person who asked sees the outcome and can send
another.
"""

import dataclasses
from datetime import UTC, datetime
from typing import Any

import psycopg

from deliverer.delivery.worker import Claimed, Worker
from deliverer.history.queries import QUERIES
from outbox.events import TEST_MESSAGE, format_timestamp
from outbox.ids import delivery_public_id, event_public_id, new_event_uuid
from outbox.publish import serialize


class EndpointDisabled(Exception):
    """Test events are not sent to disabled endpoints."""


async def send(conn: psycopg.AsyncConnection[Any], worker: Worker, endpoint: tuple[Any, ...]) -> dict[str, Any]:
    """Send a webhook.test event to ``endpoint`` (a find_endpoint_by_url row) and report what happened."""
    endpoint_id, org_id, url, secret, previous_secret, enabled = endpoint
    if not enabled:
        raise EndpointDisabled(f"endpoint {endpoint_id} is disabled; enable it before sending a test event")
    body = serialize("webhook.test", {"message": TEST_MESSAGE, "timestamp": format_timestamp(datetime.now(UTC))})
    event_uuid = new_event_uuid()
    cur = await conn.execute(QUERIES["publish_test_event"], {
        "event_id": event_uuid, "org_id": org_id, "body": body, "endpoint_id": endpoint_id,
        "worker_id": worker.worker_id, "lease_seconds": worker.settings.lease_seconds, "now": None,
    })
    row = await cur.fetchone()
    assert row is not None
    delivery_id, event_id, created_at, lease_until = row
    claimed = Claimed(delivery_id, event_id, endpoint_id, org_id, 1, 1, "webhook.test", body, created_at,
                      url, secret, previous_secret, True, lease_until)
    result = dataclasses.replace(await worker.attempt(claimed), retry_after=None)
    await worker.record([result])
    outcome = result.outcome
    return {
        "delivered": outcome.succeeded, "webhook_id": endpoint_id, "webhook_url": url,
        "event_id": event_public_id(event_id), "delivery_id": delivery_public_id(delivery_id),
        "http_status": outcome.http_status, "response_time_ms": round(outcome.duration_ms, 1),
        "error_class": outcome.error_class, "error_message": outcome.error_message,
    }
