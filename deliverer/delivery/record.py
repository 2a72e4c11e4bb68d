"""Recording: write attempt outcomes back to the log, fenced by the lease they were sent under.

``write`` is one statement for a batch of outcomes; an outcome whose lease was
taken over (or that was already written before a lost reply) is logged as a
late result that changes nothing. ``Recorder`` is the worker's side: outcomes
wait in memory and go out in batches on a connection of their own, retried with
backoff when the database is away, and updating endpoint health after each batch.
"""

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any, NamedTuple

import orjson
import psycopg
import structlog

from deliverer.delivery import operational
from deliverer.delivery.attempt import Result
from deliverer.delivery.backoff import Backoff
from deliverer.delivery.claim import Clock
from deliverer.delivery.connection import Reopening
from deliverer.delivery.health import EndpointHealth
from deliverer.delivery.queries import QUERIES
from deliverer.facts import FactKind
from deliverer.ops import tracing
from deliverer.ops.metrics import METRICS
from deliverer.settings import Settings
from outbox.ids import delivery_public_id

log = structlog.get_logger("deliverer.worker")

BATCH = 1000
# At a few hundred deliveries a second each outcome would otherwise be a transaction
# of its own; waiting lets the ones finishing meanwhile share it: LINGER at least,
# and up to LINGER_MAX while fewer than ENOUGH wait. Receivers have the request
# already, and a request's slot is free when it ends (Claimer.ended): this delays
# only the log and other workers' view of the endpoint, never a delivery.
LINGER, LINGER_MAX, ENOUGH = 0.005, 0.025, 100


class Recorded(NamedTuple):
    """What writing one outcome did: the fact it became, and when the delivery is next due (None: finished)."""

    delivery_id: uuid.UUID
    kind: FactKind
    next_attempt_at: datetime | None


async def write(conn: psycopg.AsyncConnection[Any], results: list[Result], *, worker_id: str,
                default_max_in_flight: int, now: datetime | None = None, paced: bool = True) -> list[Recorded]:
    """Write a batch of outcomes in one statement (its own transaction).

    ``paced``: the deliveries were claimed within their endpoints' limits, so their
    outcomes adapt the allowance. Test events are not.
    """
    if not results:
        return []
    span = tracing.start_linked(tracing.RECORD, (r.span for r in results), outcomes=len(results))
    cur = await conn.execute(QUERIES["record_results"], {
        "now": now,
        "worker_id": worker_id,
        "results": orjson.dumps([{
            "delivery_id": r.claimed.delivery_id, "event_id": r.claimed.event_id,
            "endpoint_id": r.claimed.endpoint_id, "org_id": r.claimed.org_id, "series": r.claimed.series,
            "attempt": r.claimed.attempt, "outcome": r.log_outcome, "retry_after": r.retry_after,
            "started_at": r.started_at, "duration_ms": r.outcome.duration_ms,
            "http_status": r.outcome.http_status, "error_class": r.outcome.error_class,
            "error_message": r.outcome.error_message, "response_excerpt": r.outcome.response_excerpt,
            "lease_until": r.claimed.lease_until, "pause": r.pause, "attempted_by": r.claimed.expired_lease_of,
        } for r in results]).decode(),
        "default_max_in_flight": default_max_in_flight, "paced": paced,
    })
    tracing.end(span)  # a batch that fails to be written leaves its span unended, unexported: it is written again
    return [Recorded(delivery_id, FactKind(kind), due) for delivery_id, kind, due in await cur.fetchall()]


class Recorder:
    """The worker's outcomes on their way to the log."""

    def __init__(self, settings: Settings, worker_id: str, health: EndpointHealth, *,
                 clock: Clock | None = None,
                 on_ready: Callable[[bool], None] = lambda ready: None,
                 on_ordered: Callable[[], None] = lambda: None) -> None:
        self.worker_id = worker_id
        self.default_max_in_flight = settings.endpoint_max_in_flight
        self.health = health
        self.clock = clock
        self.on_ready = on_ready
        self.on_ordered = on_ordered  # outcomes of ordered deliveries written: the next of their keys may go
        self.db = Reopening(settings, f"deliverer {worker_id}")
        self.pending: list[Result] = []  # until written: their requests ended, their leases still count
        self._arrived = asyncio.Event()
        self._closing = False

    def add(self, results: list[Result]) -> None:
        self.pending.extend(results)
        self._arrived.set()

    def reopen(self) -> None:
        """Accept outcomes again after a ``close`` (a worker run again)."""
        self._closing = False

    def close(self) -> None:
        """Write what is pending, then let ``run`` end."""
        self._closing = True
        self._arrived.set()

    async def record(self, results: list[Result]) -> list[Recorded]:
        """Write outcomes now, then update the health of their endpoints."""
        if not results:
            return []
        async with self.db.answered():
            conn = await self.db.get()
            last = operational.exhausting(results)
            # A delivery's last outcome and its delivery.exhausted commit together; other batches need no
            # transaction.
            async with conn.transaction() if last else contextlib.nullcontext():
                recorded = await write(conn, results, worker_id=self.worker_id,
                                       now=self.clock() if self.clock else None,
                                       default_max_in_flight=self.default_max_in_flight)
                await operational.publish_exhausted(conn, last, {r.delivery_id: r.kind for r in recorded})
            await self.health.update(conn, results)
        return recorded

    async def run(self) -> None:
        """Write outcomes in batches until closed and nothing is left to write."""
        backoff = Backoff()
        while not (self._closing and not self.pending):
            await self._arrived.wait()
            await self._linger()
            self._arrived.clear()
            while self.pending:
                batch = self.pending[:BATCH]
                try:
                    await self._record_batch(batch)
                except psycopg.Error as exc:
                    METRICS.db_errors.labels("record").inc()
                    self.on_ready(False)
                    log.warning("could not record outcomes; retrying", error=str(exc).strip(),
                                pending=len(self.pending), retry_in_s=backoff.current)
                    await self.db.close()
                    await backoff.sleep()
                    continue
                backoff.reset()
                self.on_ready(True)
                del self.pending[: len(batch)]
                if any(r.claimed.ordered for r in batch):
                    self.on_ordered()

    async def _linger(self) -> None:
        waited = 0.0
        while not self._closing and not self._ordered_waiting() and (
                waited == 0 or (len(self.pending) < ENOUGH and waited < LINGER_MAX)):
            await asyncio.sleep(LINGER)
            waited += LINGER

    def _ordered_waiting(self) -> bool:
        """An ordered delivery's outcome is pending: the next of its key waits for it to be written, so the
        batch goes at once instead of waiting for company."""
        return any(r.claimed.ordered for r in self.pending)

    async def _record_batch(self, batch: list[Result]) -> None:
        try:
            await self.record(batch)
        except psycopg.DataError as exc:
            # A value PostgreSQL refuses (not the connection): retried as it is, it
            # would hold back every outcome behind it forever.
            await self._record_apart(batch, exc)

    async def _record_apart(self, batch: list[Result], error: psycopg.DataError) -> None:
        """Record a batch that PostgreSQL refused one outcome at a time. An outcome refused on its own
        is recorded without what the receiver said (excerpt, message), then, failing that, left to
        its lease, which runs out and is logged as abandoned like a worker's death."""
        log.error("an outcome could not be stored; recording the batch one by one", error=str(error).strip(),
                  count=len(batch))
        for result in batch:
            for attempt in (result, replace(result, outcome=replace(
                    result.outcome, http_status=None, response_excerpt=None,
                    error_message=f"the attempt's outcome could not be stored: {str(error).strip()[:200]}"))):
                try:
                    await self.record([attempt])
                    break
                except psycopg.DataError as exc:
                    error = exc
            else:
                log.error("outcome dropped; its lease will run out and the delivery be tried again",
                          delivery_id=delivery_public_id(result.claimed.delivery_id), error=str(error).strip())
