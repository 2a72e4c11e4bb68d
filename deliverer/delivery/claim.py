"""Claiming: lease due deliveries to this worker, at most each endpoint's room here.

A claim is one statement, committed at once: it pushes each delivery's due time
forward by the lease and bumps its attempt number, which doubles as a fencing
token. If this worker dies, the delivery becomes due again by itself and the next
claim records the lost attempt as abandoned. No transaction stays open while the
delivery is sent.
"""

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from deliverer.delivery.connection import Reopening
from deliverer.delivery.limits import EndpointLimits
from deliverer.delivery.queries import QUERIES
from deliverer.ops.metrics import METRICS
from deliverer.settings import Settings

Clock = Callable[[], datetime]


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


class Claimer:
    """Leases work for one worker on a connection of its own.

    ``clock`` replaces the database's clock in the statement, so tests can step
    through a retry schedule without sleeping.
    """

    def __init__(self, settings: Settings, worker_id: str, limits: EndpointLimits, *,
                 clock: Clock | None = None) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self.limits = limits
        self.clock = clock
        self.db = Reopening(settings, f"deliverer {worker_id}")
        self.next_due_in: float | None = None  # from the last claim: seconds until more is due, None if nothing

    def params(self, limit: int, *, slow_start: bool = True) -> dict[str, Any]:
        """The claim statement's parameters: the lease, the clock, and each endpoint's room here."""
        room_endpoints, room_free, full = self.limits.rooms()
        return {
            "limit": limit, "now": self.clock() if self.clock else None, "worker_id": self.worker_id,
            "lease_seconds": self.settings.lease_seconds, "max_attempts": self.settings.max_attempts,
            "scan": limit * 4, "default_room": self.limits.initial if slow_start else self.limits.ceiling,
            "room_endpoints": room_endpoints, "room_free": room_free, "full_endpoints": full,
        }

    async def claim(self, limit: int, *, slow_start: bool = True) -> list[Claimed]:
        """Lease up to ``limit`` due deliveries.

        ``slow_start``: endpoints not sending here yet get the initial room
        (DELIVERER_ENDPOINT_INITIAL_CONCURRENCY), not the ceiling. ``Worker.run_once``
        turns it off: it sends one batch and waits for all of it, so there is
        nothing to protect by holding back.
        """
        conn = await self.db.get()
        cur = await conn.execute(QUERIES["claim_deliveries"], self.params(limit, slow_start=slow_start))
        rows = await cur.fetchall()
        self.next_due_in = rows.pop()[-1]  # the statement's last row says when to look again
        claimed = [Claimed(*row[:-1]) for row in rows]
        METRICS.claim_batch.observe(len(claimed))
        METRICS.last_poll.set(time.time())
        return claimed

    async def seconds_until_due(self) -> float | None:
        """Seconds until the earliest open delivery is due (a retry, or a lease running out); None if none."""
        conn = await self.db.get()
        cur = await conn.execute(QUERIES["seconds_until_due"], {"now": self.clock() if self.clock else None})
        row = await cur.fetchone()
        return None if row is None else row[0]
