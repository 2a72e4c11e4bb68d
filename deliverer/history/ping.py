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

from deliverer.delivery import record
from deliverer.delivery.attempt import Attempter
from deliverer.delivery.claim import Claimed
from deliverer.history.queries import QUERIES
from deliverer.registry.endpoints import Target
from deliverer.settings import Settings
from outbox.events import TEST_MESSAGE, format_timestamp
from outbox.ids import delivery_public_id, event_public_id, new_event_uuid
from outbox.publish import serialize
from outbox.tracecontext import current as current_trace


class EndpointDisabled(Exception):
    """Test events are not sent to disabled endpoints."""


class Sender:
    """Sends test events through the attempt step alone, as ``sender_id`` (the lease holder's name).

    Unlike a worker it keeps no connection and no endpoint health of its own:
    a test event's outcome is written on the caller's connection, and a failing
    test never counts towards disabling the endpoint. Use as an async context manager.
    """

    def __init__(self, settings: Settings, sender_id: str) -> None:
        self.settings = settings
        self.sender_id = sender_id
        self.attempter = Attempter(settings)

    async def __aenter__(self) -> "Sender":
        await self.attempter.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.attempter.__aexit__(*exc)


async def send(conn: psycopg.AsyncConnection[Any], sender: Sender, endpoint: Target) -> dict[str, Any]:
    """Send a webhook.test event to ``endpoint`` and report what happened."""
    endpoint_id, org_id, url, secret, previous_secret, enabled, headers, auth = endpoint
    if not enabled:
        raise EndpointDisabled(f"endpoint {endpoint_id} is disabled; enable it before sending a test event")
    body = serialize("webhook.test", {"message": TEST_MESSAGE, "timestamp": format_timestamp(datetime.now(UTC))})
    event_uuid = new_event_uuid()
    traceparent, tracestate = current_trace()  # like publish: the test attempt continues the caller's trace
    cur = await conn.execute(QUERIES["publish_test_event"], {
        "event_id": event_uuid, "org_id": org_id, "body": body, "endpoint_id": endpoint_id,
        "worker_id": sender.sender_id, "lease_seconds": sender.settings.lease_seconds, "now": None,
        "traceparent": traceparent, "tracestate": tracestate,
    })
    row = await cur.fetchone()
    assert row is not None
    delivery_id, event_id, created_at, lease_until = row
    claimed = Claimed(delivery_id, event_id, endpoint_id, org_id, 1, 1, "webhook.test", body, created_at,
                      url, secret, previous_secret, True, lease_until, traceparent, tracestate,
                      headers=headers, auth=auth)
    result = dataclasses.replace(await sender.attempter.attempt(claimed), retry_after=None)
    await record.write(conn, [result], worker_id=sender.sender_id, paced=False,
                       default_max_in_flight=sender.settings.endpoint_max_in_flight)
    outcome = result.outcome
    return {
        "delivered": outcome.succeeded, "webhook_id": endpoint_id, "webhook_url": url,
        "event_id": event_public_id(event_id), "delivery_id": delivery_public_id(delivery_id),
        "http_status": outcome.http_status, "response_time_ms": round(outcome.duration_ms, 1),
        "error_class": outcome.error_class, "error_message": outcome.error_message,
    }
