"""The delivery worker.

One loop claims due deliveries (a lease, taken and committed in one statement),
sends each concurrently, at most as many at once to each endpoint as the claim
allowed (the rest wait at its gate, ``deliverer.delivery.gates``, and start as
requests end), and a second loop writes outcomes back in batches. No
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
import os
import secrets
import socket
import time
import uuid
from typing import Any

import psycopg
import structlog

from deliverer.delivery import wakeups
from deliverer.delivery.attempt import Attempter, Result
from deliverer.delivery.backoff import Backoff
from deliverer.delivery.claim import Claimed, Claimer, Clock
from deliverer.delivery.gates import Gates
from deliverer.delivery.health import EndpointHealth
from deliverer.delivery.record import Recorded, Recorder
from deliverer.ops.metrics import METRICS
from deliverer.settings import Settings

log = structlog.get_logger("deliverer.worker")

CHANNEL = wakeups.CHANNEL
RECORD_GRACE = 10.0  # seconds to write outstanding outcomes at shutdown
MIN_SLEEP = 0.005
# A claim woken by a request that ended at an endpoint with no room left waits this
# long first, so the requests ending meanwhile share one claim rather than one each.
ENDED_LINGER = 0.002
AHEAD = 3  # a claim leases up to three times an endpoint's limit here: the rest waits at the gate
LEASE_MARGIN = 2.0  # seconds of a lease kept free of sends, for clock drift and the outcome's write

__all__ = ["CHANNEL", "RECORD_GRACE", "Claimed", "Result", "Worker", "default_worker_id"]


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


class Worker:
    """Delivers webhooks. Use as ``async with Worker(settings) as worker: await worker.run(stop)``.

    It runs three loops over its parts: claiming (``Claimer``), sending each claim
    as a task (``Attempter``), and writing outcomes back (``Recorder``, which also
    keeps ``EndpointHealth``), plus a LISTEN loop for wake-ups. ``clock`` replaces
    the database's clock in every statement that schedules or expires, so tests can
    step through a retry schedule without sleeping.
    """

    def __init__(self, settings: Settings, *, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock
        self.worker_id = settings.worker_id or default_worker_id()
        self.ready = False
        self._working = {"claim": False, "record": True}
        self.claimer = Claimer(settings, self.worker_id, clock=clock,
                               ended=lambda: [r.claimed.delivery_id for r in self.recorder.pending])
        self.attempter = Attempter(settings, clock=clock)
        self.recorder = Recorder(settings, self.worker_id, EndpointHealth(settings, clock=clock), clock=clock,
                                 on_ready=lambda ready: self._set_ready(ready, "record"),
                                 on_ordered=lambda: self._wake.set())
        self._in_flight: set[asyncio.Task[None]] = set()  # claimed deliveries, sending or at their gate
        self.gates = Gates()
        # Claim in batches: at least this much room in this process before claiming again.
        self._smallest_claim = max(1, min(settings.batch_size, settings.max_in_flight) // 2)
        self._passed = 0  # wake-ups passed on to other workers
        self._unsent: dict[uuid.UUID, Claimed] = {}  # claimed, no outcome yet: what shutdown hands back
        self._wake = asyncio.Event()  # a producer committed, the listener reconnected, an ordered outcome was written
        self._room = asyncio.Event()  # a send finished: room in this process
        self._looking_beyond = False  # this claim looks past endpoints the last one found full
        self._nothing_beyond_until = 0.0  # until then, nothing was due past the skipped endpoints
        self.listener = wakeups.Listener(settings, self.worker_id, self._wake,
                                         on_room=lambda endpoint_id: self.claimer.skips.ended([endpoint_id]))
        self._ended = asyncio.Event()  # a request ended: its slot at the endpoint is free

    async def __aenter__(self) -> "Worker":
        await self.attempter.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.attempter.__aexit__(*exc)
        await self.claimer.db.close()
        await self.recorder.db.close()

    # The parts, for tests, the demo and scripts ---------------------------------

    def claim_params(self, limit: int, *, slow_start: bool = True) -> dict[str, Any]:
        return self.claimer.params(limit, slow_start=slow_start)

    def claim_statement(self, limit: int) -> str:
        return self.claimer.statement(limit)

    async def claim(self, limit: int, *, slow_start: bool = True) -> list[Claimed]:
        return await self.claimer.claim(limit, slow_start=slow_start)

    async def attempt(self, claimed: Claimed) -> Result:
        return await self.attempter.attempt(claimed)

    async def record(self, results: list[Result]) -> list[Recorded]:
        """Write outcomes back (and update endpoint health); one (delivery_id, kind, next_attempt_at) each."""
        recorded = await self.recorder.record(results)
        self.claimer.skips.ended({r.claimed.endpoint_id for r in results})
        return recorded

    async def seconds_until_due(self) -> float | None:
        return await self.claimer.seconds_until_due()

    @property
    def next_due_in(self) -> float | None:
        return self.claimer.next_due_in

    async def run_once(self, limit: int | None = None) -> list[Result]:
        """Claim what is due now, send it all, record the outcomes, return them.

        For tests, the demo and scripts; ``run`` is the long-running loop.
        """
        claimed = await self.claim(limit or self.settings.batch_size, slow_start=False)
        results = list(await asyncio.gather(*(self.attempt(c) for c in claimed)))
        await self.record(results)
        return results

    def _set_ready(self, ready: bool, part: str = "claim") -> None:
        """Ready when both claiming and recording last worked: either failing makes the worker not
        ready, and it is ready again once the one that failed has worked."""
        self._working[part] = ready
        ready = all(self._working.values())
        if ready != self.ready:
            self.ready = ready
            log.info("worker ready" if ready else "worker not ready", worker_id=self.worker_id)

    # The long-running loop ---------------------------------------------------

    async def run(self, stop: asyncio.Event, force: asyncio.Event | None = None) -> None:
        """Deliver until ``stop`` is set, then finish in-flight sends within the shutdown grace.

        ``force`` (a second signal) abandons in-flight sends at once; their leases
        expire and other workers retry them, so nothing is lost.
        """
        force = force or asyncio.Event()
        self.recorder.reopen()
        listener = asyncio.create_task(self.listener.run(), name="listen")
        recorder = asyncio.create_task(self.recorder.run(), name="record")
        try:
            await self._claim_loop(stop)
        finally:
            listener.cancel()
            await self.listener.leave(self.claimer.db)
            await self._drain(force)
            self.recorder.close()
            try:
                await asyncio.wait_for(recorder, timeout=RECORD_GRACE)
            except TimeoutError:
                log.error("outcomes not recorded; their leases will expire and be retried",
                          count=len(self.recorder.pending))
            await asyncio.gather(listener, return_exceptions=True)
            log.info("worker stopped", worker_id=self.worker_id)

    async def _claim_loop(self, stop: asyncio.Event) -> None:
        backoff = Backoff()
        settings = self.settings
        smallest_claim = self._smallest_claim
        log.info("worker started", worker_id=self.worker_id, max_in_flight=settings.max_in_flight)
        while not stop.is_set():
            room = self._room_here()
            if room < smallest_claim:
                # Claim in batches: wait until sends finish and free enough room.
                self._room.clear()
                await self._sleep(stop, self._room, settings.poll_interval)
                continue
            limit = min(room, settings.batch_size)
            # Cleared before the claim, not after: a commit or a finished send while it
            # runs must still wake the sleep below.
            if self._wake.is_set() or time.monotonic() >= self._nothing_beyond_until:
                self._nothing_beyond_until = 0.0  # new work may be due past the skipped endpoints
            self._wake.clear()
            self._room.clear()
            self._ended.clear()
            looked_beyond = self._looking_beyond
            # A lease starts no earlier than the claim was sent: sends wait at most until then.
            start_by = time.monotonic() + settings.lease_seconds - settings.http_timeout - LEASE_MARGIN
            try:
                claimed = await self.claimer.claim(limit, ahead=AHEAD)
            except psycopg.Error as exc:
                METRICS.db_errors.labels("claim").inc()
                await self._lost_database(exc, backoff, stop)
                continue
            self._set_ready(True)
            backoff.reset()
            # Start before asking anything else of the database: claimed work left
            # unstarted by a failure there would sit out a whole lease.
            for endpoint_id, endpoint_limit in self.claimer.limits.items():
                self.gates.limit(endpoint_id, endpoint_limit)
            for item in claimed:
                self._start(item, start_by)
            if len(claimed) == limit and self._saturated():
                await self._pass_on()
            if looked_beyond and not claimed:
                # Nothing is due past the endpoints skipped: a hot endpoint that fills its room
                # every round need not cost a second, empty claim (a scan of its backlog) each time.
                self._nothing_beyond_until = time.monotonic() + settings.poll_interval
            self._looking_beyond = self.claimer.learnt and not self._nothing_beyond_until
            if len(claimed) == limit or self._looking_beyond:
                # More may be due right now: the limit was reached, or endpoints with no room
                # left (now skipped) may have filled the claim's window of oldest rows.
                continue
            await self._wait_for_work(stop)

    async def _wait_for_work(self, stop: asyncio.Event) -> None:
        """Sleep until the next delivery is due, a producer commits, or the poll interval ends.

        Never spin: due rows the last claim could not take are being claimed by
        another worker right now, or belong to endpoints with no room left, which
        requests ending free (here, or at another worker within the skip's time).
        """
        wait, poll = self.next_due_in, self.settings.poll_interval
        skips_end = self.claimer.skips.next_change()
        if wait is not None and wait <= 0 and (self._in_flight or skips_end is not None):
            await self._sleep(stop, self._ended, poll if skips_end is None else min(poll, skips_end),
                              also=self._wake)
            if self._ended.is_set() and not self._wake.is_set():
                await self._sleep(stop, self._wake, ENDED_LINGER)
            return
        interval = min(x for x in (wait, poll, skips_end) if x is not None)
        await self._sleep(stop, self._wake, max(interval, MIN_SLEEP))

    async def _pass_on(self) -> None:
        """More may be due than this worker can take now: another worker is woken to claim it."""
        self._passed += 1
        with contextlib.suppress(psycopg.Error):  # best effort: the others poll anyway
            async with self.claimer.db.answered():
                await self.listener.pass_on(await self.claimer.db.get(), self._passed)

    def _room_here(self) -> int:
        """How many more this process may claim: DELIVERER_MAX_IN_FLIGHT counts its requests open; the
        deliveries waiting at gates count too, up to AHEAD times as many, so that an endpoint whose
        requests hang cannot fill the process with its backlog."""
        max_in_flight = self.settings.max_in_flight
        return min(max_in_flight - self.gates.sending, AHEAD * max_in_flight - len(self._in_flight))

    def _saturated(self) -> bool:
        """No room to claim more here now (see _claim_loop): room freed at full endpoints goes to others."""
        return self._room_here() < self._smallest_claim

    async def _lost_database(self, exc: Exception, backoff: Backoff, stop: asyncio.Event) -> None:
        self._set_ready(False)
        log.warning("database unavailable; reconnecting", error=str(exc).strip(), retry_in_s=backoff.current)
        await self.claimer.db.close()
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

    def _start(self, claimed: Claimed, start_by: float) -> None:
        if claimed.expired_lease_of is not None:  # nothing to send: its outcome is known
            self.recorder.add([self.attempter.expired(claimed)])
            return
        self._unsent[claimed.delivery_id] = claimed
        self._in_flight.add(asyncio.create_task(self._send_and_queue(claimed, start_by)))
        METRICS.in_flight.set(len(self._in_flight))

    async def _send_and_queue(self, claimed: Claimed, start_by: float) -> None:
        endpoint_id = claimed.endpoint_id
        try:
            if await self.gates.enter(endpoint_id, within=start_by - time.monotonic()):
                try:
                    result = await self.attempt(claimed)
                    self._heed(result)  # before the slot passes on: the next may not go at all
                finally:
                    self.gates.leave(endpoint_id)
            else:
                result = self.attempter.hand_back(claimed, sent=False, no_room=True)
            del self._unsent[claimed.delivery_id]
            self.recorder.add([result])  # from now on its lease is not an open request (Claimer.ended)
            if self.claimer.skips.is_full(endpoint_id) and self.gates.running_low(endpoint_id):
                # The last claim left work there for want of room: room is coming back.
                self.claimer.skips.ended([endpoint_id])
                self._ended.set()
        finally:
            self._in_flight.discard(asyncio.current_task())
            METRICS.in_flight.set(len(self._in_flight))
            self._room.set()

    def _heed(self, result: Result) -> None:
        """A Retry-After pause holds here at once, for the deliveries waiting at the endpoint's gate: they
        stay there (the next claim that looks at the endpoint after the pause opens the gate again)."""
        if result.pause is not None:
            self.gates.limit(result.claimed.endpoint_id, 0)
            self.claimer.skips.blocked([result.claimed.endpoint_id], [result.pause])

    async def _drain(self, force: asyncio.Event) -> None:
        """Give in-flight sends the shutdown grace, then hand back whatever has no outcome."""
        if self._in_flight:
            await self._finish_sends(force)
        # Whatever has no outcome now (cut off, or claimed and never started) goes
        # back to the queue due at once, rather than waiting out its lease.
        sending = self.attempter.sending
        handed_back = [self.attempter.hand_back(c, sent=c.delivery_id in sending) for c in self._unsent.values()]
        self._unsent.clear()
        if handed_back:
            self.recorder.add(handed_back)

    async def _finish_sends(self, force: asyncio.Event) -> None:
        log.info("finishing in-flight sends", in_flight=len(self._in_flight),
                 grace_s=self.settings.shutdown_grace)
        sends: asyncio.Future[Any] = asyncio.gather(*self._in_flight, return_exceptions=True)
        forced: asyncio.Future[Any] = asyncio.ensure_future(force.wait())
        await asyncio.wait([sends, forced], timeout=self.settings.shutdown_grace,
                           return_when=asyncio.FIRST_COMPLETED)
        forced.cancel()
        if not sends.done():
            # Cut them off; they are handed back, so other workers retry them at once.
            log.warning("handing back in-flight sends at shutdown", count=len(self._in_flight),
                        forced=force.is_set())
            sends.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sends
