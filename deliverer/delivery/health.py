"""Endpoint health: each endpoint's run of failures, and disabling the ones that stay dead.

An endpoint that answers 410 Gone, or fails without one success for
``disable_after``, is disabled, and its owner hears of it through their other
endpoints (a ``webhook.endpoint_disabled`` event published in the same
transaction). Only the worker's own record loop runs this, after its outcomes
are written; a test event sent from the API or the CLI never does.
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
import structlog

import outbox
from deliverer.delivery.attempt import Result
from deliverer.delivery.claim import Clock
from deliverer.delivery.queries import QUERIES
from deliverer.facts import ErrorClass
from deliverer.ops.metrics import METRICS
from deliverer.settings import Settings
from outbox.ids import iso

log = structlog.get_logger("deliverer.worker")


@dataclass
class _Seen:
    """What one batch says of one endpoint."""

    succeeded: bool = False
    gone: bool = False
    first_failure: datetime | None = None


class EndpointHealth:
    """Keeps endpoints' failing_since in step with the outcomes this worker records."""

    def __init__(self, settings: Settings, *, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock
        self.failing: set[str] = set()  # endpoints whose last outcome here was a failure

    def _summary(self, results: list[Result]) -> dict[str, _Seen]:
        """Per endpoint: did anything succeed, did it say 410, when did its first failure start.

        Nothing is sent on the healthy path (successes of endpoints not seen failing)."""
        summary: dict[str, _Seen] = {}
        for result in results:
            if result.abandoned or result.outcome.error_class == ErrorClass.ENDPOINT_DISABLED:
                continue
            seen = summary.setdefault(result.claimed.endpoint_id, _Seen())
            if result.outcome.succeeded:
                seen.succeeded = True
            else:
                seen.gone = seen.gone or result.outcome.http_status == 410
                if seen.first_failure is None or result.started_at < seen.first_failure:
                    seen.first_failure = result.started_at
        return {e: s for e, s in summary.items() if not s.succeeded or e in self.failing}

    async def update(self, conn: psycopg.AsyncConnection[Any], results: list[Result]) -> None:
        """Track each endpoint's run of failures; disable it on 410 Gone or after failing for disable_after.

        Best effort: the outcomes are already recorded, and the next batch tries again.
        """
        relevant = self._summary(results)
        if not relevant:
            return
        try:
            async with conn.transaction():
                cur = await conn.execute(QUERIES["update_endpoint_health"], {
                    "now": self.clock() if self.clock else None, "disable_after": self.settings.disable_after,
                    "endpoint_ids": list(relevant), "succeeded": [s.succeeded for s in relevant.values()],
                    "gone": [s.gone for s in relevant.values()],
                    "first_failure": [s.first_failure for s in relevant.values()],
                })
                disabled = await cur.fetchall()
                # The owner hears of it through their other endpoints, in the same transaction.
                await outbox.apublish_many(conn, [outbox.Event("webhook.endpoint_disabled", {
                    "endpoint_id": endpoint_id, "url": url, "reason": reason, "disabled_at": iso(at),
                }, org_id) for endpoint_id, org_id, url, reason, at in disabled])
        except psycopg.Error as exc:
            METRICS.db_errors.labels("record").inc()
            log.warning("could not update endpoint health", error=str(exc).strip())
            return
        for endpoint_id, seen in relevant.items():
            (self.failing.discard if seen.succeeded else self.failing.add)(endpoint_id)
        for endpoint_id, org_id, _url, reason, _at in disabled:
            METRICS.endpoints_disabled.inc()
            log.warning("endpoint disabled", endpoint_id=endpoint_id, org_id=org_id, reason=reason)
