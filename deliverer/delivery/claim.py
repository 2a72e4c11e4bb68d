"""Claiming: lease due deliveries to this worker, within each endpoint's cluster-wide limits.

A claim is one statement, committed at once: it pushes each delivery's due time
forward by the lease and bumps its attempt number, which doubles as a fencing
token. If this worker dies, the delivery becomes due again by itself and the next
claim records the lost attempt as abandoned. No transaction stays open while the
delivery is sent. How much of an endpoint's work one claim may take is decided in
the same statement, from state every worker shares (see ``deliverer.delivery.limits``).
"""

import functools
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from opentelemetry import trace

from deliverer.delivery import limits
from deliverer.delivery.connection import Reopening
from deliverer.delivery.limits import Skips
from deliverer.delivery.queries import QUERIES
from deliverer.ops import tracing
from deliverer.ops.metrics import METRICS
from deliverer.settings import Settings

Clock = Callable[[], datetime]

# Due rows a claim looks through, per delivery it may lease (a batch of 100 looks at the first 400).
SCAN_PER_DELIVERY = 4
DATABASE_CLOCK = "coalesce(%(now)s::timestamptz, now())"


@functools.cache
def claim_statement(scan: int, *, clocked: bool) -> str:
    """claim_deliveries as a worker runs it: how far its scan goes and, unless a test drives the
    clock, the database's clock are written into the text instead of passed as parameters.

    psycopg prepares the statement after a few runs, and PostgreSQL then keeps one generic plan
    only while it costs no more than the plans it makes for each run's values. Parameters in the
    scan's LIMIT and in its due time leave the generic plan guessing (a tenth of the queue, a third
    due), it costs several times more, and every claim was planned afresh: 2.6 ms a claim, 37-40 us
    per delivery in a long drain (docs/performance.md). Known to the plan, they cost the same.
    """
    text = QUERIES["claim_deliveries"].replace("%(scan)s", str(int(scan)))
    return text if clocked else text.replace(DATABASE_CLOCK, "now()")


# An ordered delivery with one before it waits this long out of the claims' scan (unless the end
# of the one before brings it back sooner): long enough that a large backlog of one key costs
# little, short enough that a put-aside the end missed (a race, a crash) delays it only briefly.
PARK_SECONDS = 10.0


@dataclass(frozen=True)
class Claimed:
    """One leased delivery, with what sending it needs. Fields follow claim_deliveries' columns."""

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
    secret: str  # sealed (deliverer.security.sealing)
    previous_secret: str | None  # sealed; set while a rotated-out secret is still valid
    endpoint_enabled: bool
    lease_until: datetime  # with the attempt number, the fencing token of this lease
    traceparent: str | None = None  # the publisher's W3C trace context (outbox.tracecontext); None: untraced
    tracestate: str | None = None
    headers: dict[str, str] | None = None  # custom headers, values sealed (deliverer.registry.request_options)
    auth: str | None = None  # sealed
    ordered: bool = False  # its endpoint delivers in order: the next of its key waits for this one's outcome
    # Set: the lease of this worker ran out on the last attempt allowed. Not to be sent: recorded as
    # abandoned, the delivery failed (Attempter.expired).
    expired_lease_of: str | None = None
    expired_lease_at: datetime | None = None  # and when that lease was taken: the lost attempt's start
    claim_span: trace.SpanContext | None = None  # the claim's span, when exported: the attempt's links to it


class Claimer:
    """Leases work for one worker on a connection of its own.

    ``clock`` replaces the database's clock in the statement, so tests can step
    through a retry schedule without sleeping.
    """

    def __init__(self, settings: Settings, worker_id: str, *, clock: Clock | None = None,
                 ended: Callable[[], list[uuid.UUID]] = list) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self.clock = clock
        self.ended = ended  # deliveries whose requests ended here, outcomes not yet written: their slots are free
        self.skips = Skips(settings.poll_interval, seconds=(lambda: clock().timestamp()) if clock else time.monotonic)
        self.db = Reopening(settings, f"deliverer {worker_id}")
        self.next_due_in: float | None = None  # from the last claim: seconds until more is due, None if nothing
        self.learnt = False  # the last claim found endpoints to skip: the scan window may have held little else
        self.limits: dict[str, int] = {}  # from the last claim: requests this worker may have open, per endpoint
        self._unknown: list[str] = []

    def params(self, limit: int, *, slow_start: bool = True, ahead: int = 1) -> dict[str, Any]:
        """The claim statement's parameters: the lease, the clock, the limits' defaults, what to skip."""
        settings = self.settings
        return {
            "limit": limit, "ahead": ahead, "now": self.clock() if self.clock else None, "worker_id": self.worker_id,
            "lease_seconds": settings.lease_seconds, "max_attempts": settings.max_attempts,
            "skip_endpoints": self.skips.current(), "finished": self.ended(),
            "default_max_in_flight": settings.endpoint_max_in_flight,
            "default_rate_limit": settings.endpoint_rate_limit or None,
            "initial_allowance": self._initial(slow_start),
            "idle_after": limits.IDLE_AFTER, "park_seconds": PARK_SECONDS,
        }

    def statement(self, limit: int) -> str:
        """The claim statement for up to ``limit`` deliveries: one text for every claim of the
        loops, which never ask for more than a batch."""
        return claim_statement(SCAN_PER_DELIVERY * max(limit, self.settings.batch_size), clocked=self.clock is not None)

    def _initial(self, slow_start: bool) -> int:
        ceiling = self.settings.endpoint_max_in_flight
        return min(self.settings.endpoint_initial_concurrency, ceiling) if slow_start else ceiling

    async def claim(self, limit: int, *, slow_start: bool = True, ahead: int = 1) -> list[Claimed]:
        """Lease up to ``limit`` due deliveries, at most each endpoint's free room in the cluster
        (and this worker's fair part of it, when others send there too).

        ``slow_start``: an endpoint first seen (or idle) starts from the initial
        allowance (DELIVERER_ENDPOINT_INITIAL_CONCURRENCY), not its max_in_flight.
        ``Worker.run_once`` turns it off: it sends one batch and waits for all of
        it, so there is nothing to protect by holding back.
        ``ahead``: lease up to this many times each endpoint's limit (``limits``), the rest
        to be sent as requests end (``deliverer.delivery.gates``); 1 sends all at once.
        """
        span = tracing.start_linked(tracing.CLAIM, (), worker_id=self.worker_id, limit=limit)
        async with self.db.answered():
            claimed = await self._claim(limit, slow_start, ahead)
            if self._unknown:
                # Endpoints with no pacing row yet were passed over: make their rows, then take their share.
                await self.ensure_flow(self._unknown, slow_start=slow_start)
                if len(claimed) < limit:
                    limits = self.limits
                    claimed += await self._claim(limit - len(claimed), slow_start, ahead)
                    self.limits = limits | self.limits
        if span is not None:  # exported: each attempt's span links to this one
            span.set_attribute("deliverer.claimed", len(claimed))
            claimed = [replace(c, claim_span=span.get_span_context()) for c in claimed]
            span.end()
        METRICS.claim_batch.observe(len(claimed))
        METRICS.last_poll.set(time.time())
        return claimed

    async def _claim(self, limit: int, slow_start: bool, ahead: int) -> list[Claimed]:
        conn = await self.db.get()
        cur = await conn.execute(self.statement(limit), self.params(limit, slow_start=slow_start, ahead=ahead))
        rows = await cur.fetchall()
        # The statement's last row: what it learnt.
        *_, self.next_due_in, full, blocked, blocked_for, unknown, limited, limits, parked = rows.pop()
        self.limits = dict(zip(limited or (), limits or (), strict=True))
        claimed = [Claimed(*row[:21]) for row in rows]
        # Endpoints newly found with no room may have filled the scan window with rows this
        # claim could not take: worth claiming again at once, past them (see Worker._claim_loop).
        # So may ordered deliveries just put aside, waiting for the one before them.
        self.learnt = bool(self.skips.full(full or ()) | self.skips.blocked(blocked or (), blocked_for or ())
                           or parked)
        self._unknown = unknown or []
        return claimed

    async def ensure_flow(self, endpoint_ids: list[str], *, slow_start: bool = True) -> None:
        """Make the shared pacing rows of endpoints first seen (or after a crash emptied them)."""
        conn = await self.db.get()
        await conn.execute(QUERIES["ensure_endpoint_flow"], {
            "endpoint_ids": endpoint_ids, "now": self.clock() if self.clock else None,
            "initial_allowance": self._initial(slow_start),
        })

    async def seconds_until_due(self) -> float | None:
        """Seconds until the earliest open delivery is due (a retry, or a lease running out); None if none."""
        async with self.db.answered():
            conn = await self.db.get()
            cur = await conn.execute(QUERIES["seconds_until_due"], {"now": self.clock() if self.clock else None})
            row = await cur.fetchone()
        return None if row is None else row[0]
