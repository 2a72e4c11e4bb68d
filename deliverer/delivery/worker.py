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

Losing the database never stops the worker: every connection reconnects with
capped backoff, ``ready`` is false (and logged) until a claim succeeds again, and
outcomes wait in memory until they can be written. At shutdown the worker stops
claiming, gives in-flight sends the shutdown grace, and hands back whatever is
cut off by recording it as abandoned and due now, fenced like any result, so
other workers take it at once instead of waiting for the lease to run out.
"""

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
import structlog

import outbox
from deliverer.delivery import send, sign
from deliverer.delivery.queries import QUERIES
from deliverer.delivery.schedule import RETRY_AFTER_CAP, honour_retry_after, retry_delay
from deliverer.ops.metrics import METRICS, outcome_class
from deliverer.security import sealing
from deliverer.settings import Settings
from deliverer.storage import connections
from outbox.ids import delivery_public_id, event_public_id, iso

log = structlog.get_logger("deliverer.worker")

CHANNEL = "outbox_delivery"
RECORD_BATCH = 1000
# At a few hundred deliveries a second each outcome would otherwise be a transaction
# of its own; waiting this long lets the ones finishing meanwhile share it. Receivers
# have the request already: this delays only the log, never a delivery.
RECORD_LINGER = 0.005
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
    secret: str  # sealed (deliverer.sealing)
    previous_secret: str | None  # sealed; set while a rotated-out secret is still valid
    endpoint_enabled: bool
    lease_until: datetime  # with the attempt number, the fencing token of this lease


@dataclass(frozen=True)
class Result:
    claimed: Claimed
    outcome: send.Outcome
    started_at: datetime
    retry_after: float | None  # None: the delivery is finished (delivered or failed)
    abandoned: bool = False  # handed back at shutdown: the outcome is unknown, the delivery is due again

    @property
    def log_outcome(self) -> str:
        if self.abandoned:
            return "unknown"
        return "succeeded" if self.outcome.succeeded else "failed"


class EndpointLimits:
    """How many sends each endpoint may have in flight in this worker, adjusted like TCP
    congestion control. An endpoint starts small (``initial``, the slow start), gains one
    per success, which doubles its room every round trip while all goes well, up to
    ``ceiling``; it is halved when the endpoint times out, cannot be reached or answers
    429/503. A slow or dead endpoint then holds a few of the worker's sends, not all of
    them, even before its first timeout. An endpoint idle for ``FORGET_AFTER`` seconds
    starts small again.
    """

    FORGET_AFTER = 60.0
    SHRINK_ON = frozenset({"timeout", "connect_error"})

    def __init__(self, ceiling: int, initial: int = 4) -> None:
        self.ceiling = ceiling
        self.initial = min(initial, ceiling)
        self.caps: dict[str, int] = {}
        self.in_flight: dict[str, int] = {}
        self._last_finished: dict[str, float] = {}
        self._next_forget = 0.0

    def cap(self, endpoint_id: str) -> int:
        return self.caps.get(endpoint_id, self.initial)

    def rooms(self) -> tuple[list[str], list[int], list[str]]:
        """(endpoints whose room is not ``initial``, their room, endpoints with no room) for the claim."""
        self._forget()
        listed, free, full = [], [], []
        for endpoint_id in self.caps.keys() | self.in_flight.keys():
            room = self.cap(endpoint_id) - self.in_flight.get(endpoint_id, 0)
            if room <= 0:
                full.append(endpoint_id)
            elif room != self.initial:
                listed.append(endpoint_id)
                free.append(room)
        return listed, free, full

    def is_full(self, endpoint_id: str) -> bool:
        return self.in_flight.get(endpoint_id, 0) >= self.cap(endpoint_id)

    def started(self, endpoint_id: str) -> None:
        self.in_flight[endpoint_id] = self.in_flight.get(endpoint_id, 0) + 1

    def finished(self, endpoint_id: str, outcome: send.Outcome | None) -> None:
        left = self.in_flight.get(endpoint_id, 1) - 1
        if left:
            self.in_flight[endpoint_id] = left
        else:
            self.in_flight.pop(endpoint_id, None)
        self._last_finished[endpoint_id] = time.monotonic()
        if outcome is None:
            return
        cap = self.cap(endpoint_id)
        if outcome.error_class in self.SHRINK_ON or outcome.http_status in (429, 503):
            cap = max(1, cap // 2)
        elif outcome.succeeded:
            cap = min(self.ceiling, cap + 1)
        self.caps[endpoint_id] = cap

    def _forget(self) -> None:
        now = time.monotonic()
        if now < self._next_forget:
            return
        self._next_forget = now + self.FORGET_AFTER / 4
        for endpoint_id, at in list(self._last_finished.items()):
            if at < now - self.FORGET_AFTER and endpoint_id not in self.in_flight:
                del self._last_finished[endpoint_id]
                self.caps.pop(endpoint_id, None)


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


class Backoff:
    """Capped exponential backoff for reconnecting: 0.1 s doubling up to 5 s."""

    def __init__(self, first: float = 0.1, cap: float = 5.0) -> None:
        self.first, self.cap, self.current = first, cap, first

    def reset(self) -> None:
        self.current = self.first

    async def sleep(self, interrupt: asyncio.Event | None = None) -> None:
        """Wait the current delay (cut short when ``interrupt`` is set), then double it up to the cap."""
        if interrupt is None:
            await asyncio.sleep(self.current)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(interrupt.wait(), self.current)
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
        self._working = {"claim": False, "record": True}
        self._claim_conn: psycopg.AsyncConnection[Any] | None = None
        self._record_conn: psycopg.AsyncConnection[Any] | None = None
        self._http: send.Client | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._unsent: dict[uuid.UUID, Claimed] = {}  # claimed, no outcome yet: what shutdown hands back
        self._sending: set[uuid.UUID] = set()  # the request may have reached the receiver
        self._unrecorded: list[Result] = []
        self._failing: set[str] = set()  # endpoints whose last outcome here was a failure
        self.limits = EndpointLimits(settings.endpoint_concurrency, settings.endpoint_initial_concurrency)
        self._results_ready = asyncio.Event()
        self._wake = asyncio.Event()  # a producer committed, or the listener reconnected
        self._room = asyncio.Event()  # a send finished
        self._closing = False
        self.next_due_in: float | None = None  # from the last claim: seconds until more is due, None if nothing

    async def __aenter__(self) -> "Worker":
        self._http = send.Client(allowed=self.settings.networks, max_idle=self.settings.max_in_flight)
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

    async def _connect(self, *, listen: bool = False) -> psycopg.AsyncConnection[Any]:
        """A connection to DATABASE_URL (may be a transaction pooler), or with ``listen`` to the LISTEN URL."""
        return await connections.aconnect(self.settings, f"deliverer {self.worker_id}", listen=listen)

    def _set_ready(self, ready: bool, part: str = "claim") -> None:
        """Ready when both claiming and recording last worked: either failing makes the worker not
        ready, and it is ready again once the one that failed has worked."""
        self._working[part] = ready
        ready = all(self._working.values())
        if ready != self.ready:
            self.ready = ready
            log.info("worker ready" if ready else "worker not ready", worker_id=self.worker_id)

    async def _claim_db(self) -> psycopg.AsyncConnection[Any]:
        if self._claim_conn is None or self._claim_conn.closed:
            self._claim_conn = await self._connect()
        return self._claim_conn

    async def _record_db(self) -> psycopg.AsyncConnection[Any]:
        if self._record_conn is None or self._record_conn.closed:
            self._record_conn = await self._connect()
        return self._record_conn

    def claim_params(self, limit: int, *, slow_start: bool = True) -> dict[str, Any]:
        """The claim statement's parameters: the lease, the clock, and each endpoint's room here."""
        room_endpoints, room_free, full = self.limits.rooms()
        return {
            "limit": limit, "now": self._now(), "worker_id": self.worker_id,
            "lease_seconds": self.settings.lease_seconds, "max_attempts": self.settings.max_attempts,
            "scan": limit * 4, "default_room": self.limits.initial if slow_start else self.limits.ceiling,
            "room_endpoints": room_endpoints, "room_free": room_free, "full_endpoints": full,
        }

    async def claim(self, limit: int, *, slow_start: bool = True) -> list[Claimed]:
        """Lease up to ``limit`` due deliveries for this worker.

        ``slow_start``: endpoints not sending here yet get the initial room
        (DELIVERER_ENDPOINT_INITIAL_CONCURRENCY), not the ceiling. ``run_once`` turns it off: it sends one batch and
        waits for all of it, so there is nothing to protect by holding back.
        """
        conn = await self._claim_db()
        cur = await conn.execute(QUERIES["claim_deliveries"], self.claim_params(limit, slow_start=slow_start))
        rows = await cur.fetchall()
        self.next_due_in = rows.pop()[-1]  # the statement's last row says when to look again
        claimed = [Claimed(*row[:-1]) for row in rows]
        METRICS.claim_batch.observe(len(claimed))
        METRICS.last_poll.set(time.time())
        return claimed

    async def record(self, results: list[Result]) -> list[tuple[Any, ...]]:
        """Write outcomes back; returns (delivery_id, kind, next_attempt_at) per result."""
        if not results:
            return []
        conn = await self._record_db()
        cur = await conn.execute(QUERIES["record_results"], {
            "now": self._now(),
            "worker_id": self.worker_id,
            "results": orjson.dumps([{
                "delivery_id": r.claimed.delivery_id, "event_id": r.claimed.event_id,
                "endpoint_id": r.claimed.endpoint_id, "org_id": r.claimed.org_id, "series": r.claimed.series,
                "attempt": r.claimed.attempt, "outcome": r.log_outcome, "retry_after": r.retry_after,
                "started_at": r.started_at, "duration_ms": r.outcome.duration_ms,
                "http_status": r.outcome.http_status, "error_class": r.outcome.error_class,
                "error_message": r.outcome.error_message, "response_excerpt": r.outcome.response_excerpt,
                "lease_until": r.claimed.lease_until,
            } for r in results]).decode(),
        })
        rows = await cur.fetchall()
        await self._update_health(conn, results)
        return rows

    async def _update_health(self, conn: psycopg.AsyncConnection[Any], results: list[Result]) -> None:
        """Track each endpoint's run of failures; disable it on 410 Gone or after failing for disable_after.

        Best effort: the outcomes are already recorded, and the next batch tries again.
        Nothing is sent on the healthy path (successes of endpoints not seen failing).
        """
        summary: dict[str, list[Any]] = {}  # endpoint -> [succeeded, gone, first failure]
        for result in results:
            if result.abandoned or result.outcome.error_class == "endpoint_disabled":
                continue
            entry = summary.setdefault(result.claimed.endpoint_id, [False, False, None])
            if result.outcome.succeeded:
                entry[0] = True
            else:
                entry[1] = entry[1] or result.outcome.http_status == 410
                entry[2] = result.started_at if entry[2] is None else min(entry[2], result.started_at)
        relevant = {e: v for e, v in summary.items() if not v[0] or e in self._failing}
        if not relevant:
            return
        try:
            async with conn.transaction():
                cur = await conn.execute(QUERIES["update_endpoint_health"], {
                    "now": self._now(), "disable_after": self.settings.disable_after,
                    "endpoint_ids": list(relevant), "succeeded": [v[0] for v in relevant.values()],
                    "gone": [v[1] for v in relevant.values()], "first_failure": [v[2] for v in relevant.values()],
                })
                disabled = await cur.fetchall()
                # The owner hears of it through their other endpoints, in the same transaction.
                await outbox.apublish_many(conn, [outbox.Event("webhook.endpoint_disabled", {
                    "endpoint_id": endpoint_id, "url": url, "reason": reason, "disabled_at": iso(at),
                }, org_id) for endpoint_id, org_id, url, reason, at in disabled])
        except _TRANSIENT as exc:
            METRICS.db_errors.labels("record").inc()
            log.warning("could not update endpoint health", error=str(exc).strip())
            return
        for endpoint_id, (succeeded, _gone, _first) in relevant.items():
            (self._failing.discard if succeeded else self._failing.add)(endpoint_id)
        for endpoint_id, org_id, _url, reason, _at in disabled:
            METRICS.endpoints_disabled.inc()
            log.warning("endpoint disabled", endpoint_id=endpoint_id, org_id=org_id, reason=reason)

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
            self._count_attempt(claimed, outcome, None)
            return Result(claimed, outcome, started_at, None)
        body = claimed.body.encode("utf-8")
        try:
            secret = sealing.unseal(claimed.secret)
            previous = () if claimed.previous_secret is None else (sealing.unseal(claimed.previous_secret),)
        except sealing.SealingError as exc:
            # Nothing is sent unsigned: the attempt fails and is retried on the schedule once keys are fixed.
            outcome = send.Outcome(False, 0.0, error_class="other", error_message=str(exc))
            retry_after = retry_delay(claimed.attempt, self.settings.retry_delays)
            self._log_attempt(claimed, outcome, retry_after)
            self._count_attempt(claimed, outcome, retry_after)
            return Result(claimed, outcome, started_at, retry_after)
        headers = sign.headers(
            secret=secret, previous_secrets=previous, body=body,
            event_id=event_public_id(claimed.event_id),
            event_type=claimed.event_type, delivery_id=delivery_public_id(claimed.delivery_id),
            attempt=claimed.attempt, timestamp=int(started_at.timestamp()),
        )
        assert self._http is not None, "use the Worker as an async context manager"
        self._sending.add(claimed.delivery_id)
        outcome = await self._http.post(claimed.url, body, headers, timeout=self.settings.http_timeout)
        self._sending.discard(claimed.delivery_id)  # left in place only when a shutdown cuts the send off
        retry_after = None
        if outcome.http_status == 410:
            pass  # Gone: the receiver asks us to stop, so this is final and the endpoint gets disabled
        elif not outcome.succeeded:
            scheduled = retry_delay(claimed.attempt, self.settings.retry_delays, jitter=self.settings.retry_jitter)
            retry_after = honour_retry_after(scheduled, outcome.retry_after)
            if outcome.retry_after is not None:
                # The log has no column for it: the message says what the receiver asked and what was done.
                asked = f"Retry-After {outcome.retry_after:g} s"
                if retry_after is None:
                    note = f"{asked} ignored: that was the last attempt"
                elif outcome.retry_after > RETRY_AFTER_CAP:
                    note = f"{asked} capped at {RETRY_AFTER_CAP:g} s"
                elif scheduled is not None and outcome.retry_after > scheduled:
                    note = f"{asked} honoured"
                else:
                    note = f"{asked} shorter than the schedule's {scheduled:g} s"
                outcome = replace(outcome, error_message=f"{outcome.error_message}; {note}")
        self._log_attempt(claimed, outcome, retry_after)
        self._count_attempt(claimed, outcome, retry_after)
        return Result(claimed, outcome, started_at, retry_after)

    def _count_attempt(self, claimed: Claimed, outcome: send.Outcome, retry_after: float | None) -> None:
        METRICS.attempts.labels(outcome_class(outcome.error_class)).inc()
        METRICS.attempt_duration.observe(outcome.duration_ms / 1000)
        if outcome.succeeded:
            finished = self.clock() if self.clock else datetime.now(UTC)
            METRICS.end_to_end.observe(max(0.0, (finished - claimed.created_at).total_seconds()))
        elif retry_after is None:
            METRICS.deliveries_failed.inc()
        else:
            METRICS.retries_scheduled.inc()

    def hand_back(self, claimed: Claimed, *, sent: bool) -> Result:
        """The result for a send cut off at shutdown: abandoned, due again now (or failed if it was the last).

        It counts as an attempt, like a lease that ran out: the receiver may have
        got the request, and a request that kills workers must not loop forever.
        """
        started_at = self.clock() if self.clock else datetime.now(UTC)
        message = ("cut off by shutdown mid-send; the receiver may have it" if sent
                   else "handed back at shutdown before it was sent")
        outcome = send.Outcome(False, 0.0, error_class="shutdown", error_message=message)
        last = claimed.attempt >= self.settings.max_attempts
        return Result(claimed, outcome, started_at, None if last else 0.0, abandoned=True)

    def _log_attempt(self, claimed: Claimed, outcome: send.Outcome, retry_after: float | None) -> None:
        # Successes are in the delivery log and the metrics; a line each would be most of
        # the log volume (and of the worker's CPU) at thousands of deliveries a second.
        if outcome.succeeded and not log.is_enabled_for(logging.DEBUG):
            return
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
            log.debug("delivered", **fields)
        elif retry_after is None:
            log.warning("delivery failed", error_class=outcome.error_class, error=outcome.error_message, **fields)
        else:
            log.info("attempt failed", error_class=outcome.error_class, error=outcome.error_message,
                     retry_in_s=retry_after, **fields)

    async def run_once(self, limit: int | None = None) -> list[Result]:
        """Claim what is due now, send it all, record the outcomes, return them.

        For tests, the demo and scripts; ``run`` is the long-running loop.
        """
        claimed = await self.claim(limit or self.settings.batch_size, slow_start=False)
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
            # Cleared before the claim, not after: a commit or a finished send while it
            # runs must still wake the sleep below.
            self._wake.clear()
            self._room.clear()
            try:
                claimed = await self.claim(limit)
            except _TRANSIENT as exc:
                METRICS.db_errors.labels("claim").inc()
                await self._lost_database(exc, backoff, stop)
                continue
            self._set_ready(True)
            backoff.reset()
            # Start before asking anything else of the database: claimed work left
            # unstarted by a failure there would sit out a whole lease.
            for item in claimed:
                self._start(item)
            if len(claimed) == limit or any(self.limits.is_full(c.endpoint_id) for c in claimed):
                # More may be due right now: the limit was reached, or an endpoint's room ran
                # out and the claim's window of oldest rows may have held little else.
                continue
            wait = self.next_due_in
            # Sleep until the next delivery is due, a producer commits, or the poll
            # interval ends. Never spin: due rows we could not claim are being
            # claimed by another worker right now, or belong to endpoints with no
            # room left here, which a finishing send may free.
            if wait is not None and wait <= 0 and self.limits.in_flight:
                await self._sleep(stop, self._room, settings.poll_interval, also=self._wake)
                continue
            interval = settings.poll_interval if wait is None else min(wait, settings.poll_interval)
            await self._sleep(stop, self._wake, max(interval, MIN_SLEEP))

    async def _lost_database(self, exc: Exception, backoff: Backoff, stop: asyncio.Event) -> None:
        self._set_ready(False)
        log.warning("database unavailable; reconnecting", error=str(exc).strip(), retry_in_s=backoff.current)
        if self._claim_conn is not None:
            await self._claim_conn.close()
        await backoff.sleep(stop)

    @staticmethod
    async def _sleep(stop: asyncio.Event, wake: asyncio.Event, seconds: float,
                     also: asyncio.Event | None = None) -> None:
        waiters = [asyncio.ensure_future(e.wait()) for e in (wake, stop, also) if e is not None]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    def _start(self, claimed: Claimed) -> None:
        self._unsent[claimed.delivery_id] = claimed
        self.limits.started(claimed.endpoint_id)
        self._in_flight.add(asyncio.create_task(self._send_and_queue(claimed)))
        METRICS.in_flight.set(len(self._in_flight))

    async def _send_and_queue(self, claimed: Claimed) -> None:
        result = None
        try:
            result = await self.attempt(claimed)
            del self._unsent[claimed.delivery_id]
            self._unrecorded.append(result)
            self._results_ready.set()
        finally:
            self.limits.finished(claimed.endpoint_id, None if result is None else result.outcome)
            self._in_flight.discard(asyncio.current_task())  # type: ignore[arg-type]
            METRICS.in_flight.set(len(self._in_flight))
            self._room.set()

    async def _record_loop(self) -> None:
        """Write outcomes in batches until closing and nothing is left to write."""
        backoff = Backoff()
        while not (self._closing and not self._unrecorded):
            await self._results_ready.wait()
            if len(self._unrecorded) < RECORD_BATCH and not self._closing:
                await asyncio.sleep(RECORD_LINGER)
            self._results_ready.clear()
            while self._unrecorded:
                batch = self._unrecorded[:RECORD_BATCH]
                try:
                    try:
                        await self.record(batch)
                    except psycopg.DataError as exc:
                        # A value PostgreSQL refuses (not the connection): retried as it is, it
                        # would hold back every outcome behind it forever.
                        await self._record_apart(batch, exc)
                except _TRANSIENT as exc:
                    METRICS.db_errors.labels("record").inc()
                    self._set_ready(False, "record")
                    log.warning("could not record outcomes; retrying", error=str(exc).strip(),
                                pending=len(self._unrecorded), retry_in_s=backoff.current)
                    if self._record_conn is not None:
                        await self._record_conn.close()
                    await backoff.sleep()
                    continue
                backoff.reset()
                self._set_ready(True, "record")
                del self._unrecorded[: len(batch)]

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
            # Cut them off; they are handed back below, so other workers retry them at once.
            log.warning("handing back in-flight sends at shutdown", count=len(self._in_flight),
                        forced=force.is_set())
            sends.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sends
        # Whatever has no outcome now (cut off, or claimed and never started) goes
        # back to the queue due at once, rather than waiting out its lease.
        handed_back = [self.hand_back(c, sent=c.delivery_id in self._sending) for c in self._unsent.values()]
        self._unsent.clear()
        if handed_back:
            self._unrecorded.extend(handed_back)
            self._results_ready.set()

    async def _listen(self) -> None:
        backoff = Backoff()
        while True:
            try:
                # LISTEN is session state: this connection must keep its server session
                # (DELIVERER_LISTEN_DATABASE_URL), unlike every other one.
                async with await self._connect(listen=True) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    backoff.reset()
                    self._wake.set()  # anything committed while not listening
                    async for _ in conn.notifies():
                        self._wake.set()
            except _TRANSIENT as exc:
                METRICS.db_errors.labels("listen").inc()
                log.warning("notification connection lost; reconnecting", error=str(exc).strip(),
                            retry_in_s=backoff.current)
                await backoff.sleep()
