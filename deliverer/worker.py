"""The delivery worker.

One loop claims due deliveries (a lease, taken and committed in one statement),
sends each concurrently, and a second loop writes outcomes back in batches. No
transaction is ever open across an HTTP call. A claim pushes the delivery's
due time forward by the lease and bumps its attempt number, which doubles as a
fencing token: if this worker dies, the delivery becomes due again by itself,
the next worker records the lost attempt as abandoned, and a result that this
worker reports after its lease was taken over changes nothing.

Wake-ups come from LISTEN/NOTIFY (one notification per producer transaction);
between them the worker sleeps until the next delivery is due, at most
``poll_interval``, so retries and expired leases are picked up without a
notification.
"""

import asyncio
import contextlib
import os
import secrets
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import psycopg
import structlog

from deliverer import send, sign
from deliverer.config import Settings
from deliverer.queries import QUERIES
from deliverer.schedule import retry_delay
from outbox.ids import delivery_public_id, event_public_id

log = structlog.get_logger("deliverer.worker")

CHANNEL = "outbox_delivery"
RECORD_BATCH = 1000
RECORD_GRACE = 10.0  # seconds to write outstanding outcomes at shutdown
MIN_SLEEP = 0.005
# A worker outlives any database error: it logs, backs off and tries again, so a
# failover or an outage never kills the pod (liveness is the event loop's job).
_TRANSIENT = (psycopg.Error,)

Clock = Callable[[], datetime]


@dataclass(frozen=True)
class Claimed:
    delivery_id: uuid.UUID
    event_id: uuid.UUID
    endpoint_id: str
    org_id: str
    series: int
    attempt: int
    event_type: str
    body: str
    created_at: datetime
    url: str
    secret: str
    endpoint_enabled: bool


@dataclass(frozen=True)
class Result:
    claimed: Claimed
    outcome: send.Outcome
    started_at: datetime
    retry_after: float | None  # None: the delivery is finished (delivered or failed)


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


class Backoff:
    """Capped exponential backoff for reconnecting: 0.1 s doubling up to 5 s."""

    def __init__(self, first: float = 0.1, cap: float = 5.0) -> None:
        self.first, self.cap, self.current = first, cap, first

    def reset(self) -> None:
        self.current = self.first

    async def sleep(self) -> None:
        await asyncio.sleep(self.current)
        self.current = min(self.current * 2, self.cap)


class Worker:
    """Delivers webhooks. Use as ``async with Worker(settings) as worker: await worker.run(stop)``.

    ``clock`` replaces the database's clock in every statement that schedules or
    expires, so tests can step through a retry schedule without sleeping.
    """

    def __init__(self, settings: Settings, *, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock
        self.worker_id = settings.worker_id or default_worker_id()
        self.ready = False
        self._claim_conn: psycopg.AsyncConnection[Any] | None = None
        self._record_conn: psycopg.AsyncConnection[Any] | None = None
        self._http: aiohttp.ClientSession | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._unrecorded: list[Result] = []
        self._results_ready = asyncio.Event()
        self._wake = asyncio.Event()  # a producer committed, or the listener reconnected
        self._room = asyncio.Event()  # a send finished
        self._closing = False

    async def __aenter__(self) -> "Worker":
        self._http = send.new_session(max_connections=self.settings.max_in_flight)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._http is not None:
            await self._http.close()
        for conn in (self._claim_conn, self._record_conn):
            if conn is not None:
                await conn.close()

    # Database access ------------------------------------------------------

    def _now(self) -> datetime | None:
        return self.clock() if self.clock else None

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(
            self.settings.database_url, autocommit=True, application_name=f"deliverer {self.worker_id}"
        )

    async def _claim_db(self) -> psycopg.AsyncConnection[Any]:
        if self._claim_conn is None or self._claim_conn.closed:
            self._claim_conn = await self._connect()
        return self._claim_conn

    async def _record_db(self) -> psycopg.AsyncConnection[Any]:
        if self._record_conn is None or self._record_conn.closed:
            self._record_conn = await self._connect()
        return self._record_conn

    async def claim(self, limit: int) -> list[Claimed]:
        """Lease up to ``limit`` due deliveries for this worker."""
        conn = await self._claim_db()
        cur = await conn.execute(QUERIES["claim_deliveries"], {
            "limit": limit, "now": self._now(), "worker_id": self.worker_id,
            "lease_seconds": self.settings.lease_seconds, "max_attempts": self.settings.max_attempts,
        })
        return [Claimed(*row) for row in await cur.fetchall()]

    async def record(self, results: list[Result]) -> list[tuple[Any, ...]]:
        """Write outcomes back; returns (delivery_id, kind, next_attempt_at) per result."""
        if not results:
            return []
        conn = await self._record_db()
        cur = await conn.execute(QUERIES["record_results"], {
            "now": self._now(),
            "worker_id": self.worker_id,
            "delivery_ids": [r.claimed.delivery_id for r in results],
            "event_ids": [r.claimed.event_id for r in results],
            "endpoint_ids": [r.claimed.endpoint_id for r in results],
            "org_ids": [r.claimed.org_id for r in results],
            "series": [r.claimed.series for r in results],
            "attempts": [r.claimed.attempt for r in results],
            "outcomes": ["succeeded" if r.outcome.succeeded else "failed" for r in results],
            "retry_after": [r.retry_after for r in results],
            "started_at": [r.started_at for r in results],
            "duration_ms": [r.outcome.duration_ms for r in results],
            "http_status": [r.outcome.http_status for r in results],
            "error_class": [r.outcome.error_class for r in results],
            "error_message": [r.outcome.error_message for r in results],
            "response_excerpt": [r.outcome.response_excerpt for r in results],
        })
        return await cur.fetchall()

    async def seconds_until_due(self) -> float | None:
        conn = await self._claim_db()
        cur = await conn.execute(QUERIES["seconds_until_due"], {"now": self._now()})
        row = await cur.fetchone()
        return None if row is None else row[0]

    # One attempt ------------------------------------------------------------

    async def attempt(self, claimed: Claimed) -> Result:
        """Send one claimed delivery and decide what happens next; never raises for the receiver's sake."""
        started_at = self.clock() if self.clock else datetime.now(UTC)
        if not claimed.endpoint_enabled:
            outcome = send.Outcome(
                False, 0.0, error_class="endpoint_disabled",
                error_message=f"endpoint {claimed.endpoint_id} is disabled; nothing was sent",
            )
            return Result(claimed, outcome, started_at, None)
        body = claimed.body.encode("utf-8")
        headers = sign.headers(
            secret=claimed.secret, body=body, event_id=event_public_id(claimed.event_id),
            event_type=claimed.event_type, delivery_id=delivery_public_id(claimed.delivery_id),
            attempt=claimed.attempt, timestamp=int(started_at.timestamp()),
        )
        assert self._http is not None, "use the Worker as an async context manager"
        outcome = await send.post(self._http, claimed.url, body, headers, timeout=self.settings.http_timeout)
        retry_after = None
        if not outcome.succeeded:
            retry_after = retry_delay(claimed.attempt, self.settings.retry_delays,
                                      jitter=self.settings.retry_jitter)
        self._log_attempt(claimed, outcome, retry_after)
        return Result(claimed, outcome, started_at, retry_after)

    def _log_attempt(self, claimed: Claimed, outcome: send.Outcome, retry_after: float | None) -> None:
        fields = {
            "event_id": event_public_id(claimed.event_id),
            "delivery_id": delivery_public_id(claimed.delivery_id),
            "endpoint_id": claimed.endpoint_id,
            "event_type": claimed.event_type,
            "attempt": claimed.attempt,
            "status": outcome.http_status,
            "duration_ms": round(outcome.duration_ms, 2),
        }
        if outcome.succeeded:
            log.info("delivered", **fields)
        elif retry_after is None:
            log.warning("delivery failed", error_class=outcome.error_class, error=outcome.error_message, **fields)
        else:
            log.info("attempt failed", error_class=outcome.error_class, error=outcome.error_message,
                     retry_in_s=retry_after, **fields)

    async def run_once(self, limit: int | None = None) -> list[Result]:
        """Claim what is due now, send it all, record the outcomes, return them.

        For tests, the demo and scripts; ``run`` is the long-running loop.
        """
        claimed = await self.claim(limit or self.settings.batch_size)
        results = list(await asyncio.gather(*(self.attempt(c) for c in claimed)))
        await self.record(results)
        return results

    # The long-running loop ---------------------------------------------------

    async def run(self, stop: asyncio.Event, force: asyncio.Event | None = None) -> None:
        """Deliver until ``stop`` is set, then finish in-flight sends within the shutdown grace.

        ``force`` (a second signal) abandons in-flight sends at once; their leases
        expire and other workers retry them, so nothing is lost.
        """
        force = force or asyncio.Event()
        self._closing = False
        listener = asyncio.create_task(self._listen(), name="listen")
        recorder = asyncio.create_task(self._record_loop(), name="record")
        try:
            await self._claim_loop(stop)
        finally:
            listener.cancel()
            await self._drain(force)
            self._closing = True
            self._results_ready.set()
            try:
                await asyncio.wait_for(recorder, timeout=RECORD_GRACE)
            except TimeoutError:
                log.error("outcomes not recorded; their leases will expire and be retried",
                          count=len(self._unrecorded))
            await asyncio.gather(listener, return_exceptions=True)
            log.info("worker stopped", worker_id=self.worker_id)

    async def _claim_loop(self, stop: asyncio.Event) -> None:
        backoff = Backoff()
        settings = self.settings
        smallest_claim = max(1, min(settings.batch_size, settings.max_in_flight) // 2)
        log.info("worker started", worker_id=self.worker_id, max_in_flight=settings.max_in_flight)
        while not stop.is_set():
            room = settings.max_in_flight - len(self._in_flight)
            if room < smallest_claim:
                # Claim in batches: wait until sends finish and free enough room.
                self._room.clear()
                await self._sleep(stop, self._room, settings.poll_interval)
                continue
            limit = min(room, settings.batch_size)
            self._wake.clear()
            try:
                claimed = await self.claim(limit)
                wait = 0.0 if len(claimed) == limit else await self.seconds_until_due()
            except _TRANSIENT as exc:
                await self._lost_database(exc, backoff)
                continue
            self.ready = True
            backoff.reset()
            for item in claimed:
                self._start(item)
            if len(claimed) == limit:
                continue  # there may be more due right now
            # Sleep until the next delivery is due, a producer commits, or the poll
            # interval ends. Never spin: due rows we could not claim are being
            # claimed by another worker right now.
            interval = settings.poll_interval if wait is None else min(wait, settings.poll_interval)
            await self._sleep(stop, self._wake, max(interval, MIN_SLEEP))

    async def _lost_database(self, exc: Exception, backoff: Backoff) -> None:
        self.ready = False
        log.warning("database unavailable; reconnecting", error=str(exc).strip(), retry_in_s=backoff.current)
        if self._claim_conn is not None:
            await self._claim_conn.close()
        await backoff.sleep()

    @staticmethod
    async def _sleep(stop: asyncio.Event, wake: asyncio.Event, seconds: float) -> None:
        waiters = [asyncio.ensure_future(wake.wait()), asyncio.ensure_future(stop.wait())]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    def _start(self, claimed: Claimed) -> None:
        self._in_flight.add(asyncio.create_task(self._send_and_queue(claimed)))

    async def _send_and_queue(self, claimed: Claimed) -> None:
        try:
            with structlog.contextvars.bound_contextvars(delivery_id=delivery_public_id(claimed.delivery_id)):
                result = await self.attempt(claimed)
            self._unrecorded.append(result)
            self._results_ready.set()
        finally:
            self._in_flight.discard(asyncio.current_task())  # type: ignore[arg-type]
            self._room.set()

    async def _record_loop(self) -> None:
        """Write outcomes in batches until closing and nothing is left to write."""
        backoff = Backoff()
        while not (self._closing and not self._unrecorded):
            await self._results_ready.wait()
            self._results_ready.clear()
            while self._unrecorded:
                batch = self._unrecorded[:RECORD_BATCH]
                try:
                    await self.record(batch)
                except _TRANSIENT as exc:
                    log.warning("could not record outcomes; retrying", error=str(exc).strip(),
                                pending=len(self._unrecorded), retry_in_s=backoff.current)
                    if self._record_conn is not None:
                        await self._record_conn.close()
                    await backoff.sleep()
                    continue
                backoff.reset()
                del self._unrecorded[: len(batch)]

    async def _drain(self, force: asyncio.Event) -> None:
        if not self._in_flight:
            return
        log.info("finishing in-flight sends", in_flight=len(self._in_flight),
                 grace_s=self.settings.shutdown_grace)
        sends = asyncio.gather(*self._in_flight, return_exceptions=True)
        forced = asyncio.ensure_future(force.wait())
        await asyncio.wait([sends, forced], timeout=self.settings.shutdown_grace,
                           return_when=asyncio.FIRST_COMPLETED)
        forced.cancel()
        if not sends.done():
            # Their leases expire and other workers retry them: nothing is lost.
            log.warning("abandoning in-flight sends at shutdown", count=len(self._in_flight))
            sends.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sends

    async def _listen(self) -> None:
        backoff = Backoff()
        while True:
            try:
                async with await self._connect() as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    backoff.reset()
                    self._wake.set()  # anything committed while not listening
                    async for _ in conn.notifies():
                        self._wake.set()
            except _TRANSIENT as exc:
                log.warning("notification connection lost; reconnecting", error=str(exc).strip(),
                            retry_in_s=backoff.current)
                await backoff.sleep()
