"""Endpoint health: each endpoint's run of failures, and disabling the ones that stay dead.

An endpoint that answers 410 Gone, or fails without one success for
``disable_after``, is disabled, and its owner hears of it through their other
endpoints (a ``webhook.endpoint_disabled`` event published in the same
transaction), the operator through theirs (``endpoint.disabled``); the first
success after a run of failures is announced to the operator as
``endpoint.recovered`` (``deliverer.delivery.operational``). Only the worker's own
record loop runs this, after its outcomes are written; a test event sent from the
API or the CLI never does.

Each worker looks only at successes of endpoints it knows to be failing, so the
healthy path costs nothing; it learns of the runs other workers saw from the
database every ``FAILING_REFRESH`` seconds, so the success that ends a run is
noticed whichever worker it comes to.
"""

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
import structlog

import outbox
from deliverer.delivery.attempt import Result
from deliverer.delivery.claim import Clock
from deliverer.delivery.operational import Transition, failing_endpoints, publish_transitions
from deliverer.delivery.queries import QUERIES
from deliverer.facts import ErrorClass
from deliverer.ops.metrics import METRICS
from deliverer.settings import Settings
from outbox.ids import iso

log = structlog.get_logger("deliverer.worker")

FAILING_REFRESH = 5.0


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
        self.failing: set[str] = set()  # endpoints whose last outcome here was a failure, or failing in the db
        self._refreshed_at = float("-inf")

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
        try:
            await self._refresh(conn)
        except psycopg.Error as exc:
            log.warning("could not read the failing endpoints", error=str(exc).strip())
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
                changed = [(Transition(endpoint_id, org_id, url, reason or "", at, since), recovered)
                           for endpoint_id, org_id, url, reason, at, since, recovered in await cur.fetchall()]
                disabled = [t for t, recovered in changed if not recovered]
                # The owner hears of it through their other endpoints, in the same transaction.
                await outbox.apublish_many(conn, [outbox.Event("webhook.endpoint_disabled", {
                    "endpoint_id": t.endpoint_id, "url": t.url, "reason": t.reason, "disabled_at": iso(t.at),
                }, t.org_id) for t in disabled])
                await publish_transitions(conn, disabled, [_recovery(t) for t, recovered in changed if recovered])
        except psycopg.Error as exc:
            METRICS.db_errors.labels("record").inc()
            log.warning("could not update endpoint health", error=str(exc).strip())
            return
        for endpoint_id, seen in relevant.items():
            (self.failing.discard if seen.succeeded else self.failing.add)(endpoint_id)
        for t, recovered in changed:
            if recovered:
                log.info("endpoint recovered", endpoint_id=t.endpoint_id, org_id=t.org_id)
            else:
                METRICS.endpoints_disabled.inc()
                log.warning("endpoint disabled", endpoint_id=t.endpoint_id, org_id=t.org_id, reason=t.reason)

    async def _refresh(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Add the endpoints other workers saw failing, at most every FAILING_REFRESH seconds."""
        if time.monotonic() - self._refreshed_at < FAILING_REFRESH:
            return
        self._refreshed_at = time.monotonic()
        self.failing |= await failing_endpoints(conn)


def _recovery(t: Transition) -> Transition:
    since = "" if t.failing_since is None else f" since {iso(t.failing_since)}"
    return Transition(t.endpoint_id, t.org_id, t.url, f"an attempt succeeded after failures{since}", t.at,
                      t.failing_since)
