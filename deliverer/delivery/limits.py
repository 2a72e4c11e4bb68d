"""Endpoint limits, held across every deliverer process.

Each endpoint may have at most ``allowance`` requests open at once in the whole
cluster, and at most ``rate_limit`` deliveries a second. The allowance adapts
like TCP congestion control: a new or idle endpoint starts at the initial
allowance (the slow start), gains one per success, which doubles it every round
trip while all goes well, up to the endpoint's ``max_in_flight``; it halves when
the endpoint times out, cannot be reached or answers 429/503, and a 429/503 with
Retry-After pauses the whole endpoint. So 2 pods or 50 give a customer the same
load, and a dead endpoint holds a few of the cluster's sends, not all of them.

The requests open to an endpoint are its leases that have not run out, less those
whose answer the claiming worker holds already (their outcomes are on the way to
the log): counted, never kept as a number, so nothing can drift, a worker refills
a slot as soon as its request ends, and a crashed worker's slots come back when its
leases run out. The rest of the state lives in PostgreSQL (``endpoint_flow``, one
row an endpoint) and is written under that row's lock by the claim (which spends
tokens) and by recording outcomes (which adapt the allowance); see
claim_deliveries and record_results. No transaction is held while a request is out.

Workers sharing an endpoint each take at most their fair part, the allowance over
the workers holding its leases (and the last one held back there): without it the
first worker to fill the allowance would refill its slots for good, as fast as its
requests end, and the others would never get one. A claim gives the worker its
limit there and leases a few times as much, held at its gate
(``deliverer.delivery.gates``) until requests end, so slots never wait for a claim.

This module holds the arithmetic as plain functions, the specification the SQL
follows (a property test runs both), and ``Skips``, what one worker has learnt
about endpoints it need not ask for again yet.
"""

import math
import time
from collections.abc import Callable, Iterable

INITIAL_ALLOWANCE = 4
IDLE_AFTER = 60.0  # seconds with nothing open and no request sent before an endpoint starts small again


def allowance_after(allowance: int, *, successes: int, congested: bool, ceiling: int) -> int:
    """The allowance after a batch of outcomes: halved once if any said the endpoint is
    overloaded (timeout, connection error, 429, 503), else one more per success, up to ``ceiling``."""
    if congested:
        return max(1, allowance // 2)
    return min(ceiling, allowance + successes)


def tokens_now(tokens: float, *, rate: float, elapsed: float) -> float:
    """The rate limit's bucket after ``elapsed`` seconds: refilled at ``rate`` a second, holding at most
    half a second's worth (at least one token). A 10-second window then sees at most 10.5 seconds of rate."""
    return min(max(1.0, rate / 2), tokens + rate * max(0.0, elapsed))


def free_room(*, allowance: int, in_flight: int, tokens: float | None, paused: bool,
              mine: int = 0, sharers: int = 1) -> int:
    """How many new requests a claim may open now: the room left in the cluster (``in_flight``
    counts everyone's, ``mine`` this worker's), at most this worker's part among ``sharers``."""
    if paused:
        return 0
    room = min(allowance - in_flight, math.ceil(allowance / sharers) - mine)
    if tokens is not None:
        room = min(room, math.floor(tokens))
    return max(0, room)


class Skips:
    """Endpoints this worker leaves out of its claims for a while.

    Full ones (no room left for this worker) until a request of its own there ends,
    or for ``full_for`` seconds, since other workers' outcomes free room too; paused or
    rate-limited ones for as long as the claim said. Only a hint that keeps their
    backlog from filling a claim's scan window: the limits are enforced by the claim.
    """

    def __init__(self, full_for: float, *, seconds: Callable[[], float] = time.monotonic) -> None:
        self.full_for = full_for
        self.seconds = seconds  # a test's fake clock, when there is one
        self._full: dict[str, float] = {}
        self._blocked: dict[str, float] = {}

    def full(self, endpoint_ids: Iterable[str]) -> set[str]:
        """Skip these until outcomes free room; returns those not skipped already."""
        until = self.seconds() + self.full_for
        return self._add(self._full, ((e, until) for e in endpoint_ids))

    def blocked(self, endpoint_ids: Iterable[str], seconds: Iterable[float]) -> set[str]:
        """Skip these for the seconds given; returns those not skipped already."""
        now = self.seconds()
        return self._add(self._blocked, ((e, now + max(0.0, s)) for e, s in zip(endpoint_ids, seconds, strict=True)))

    def _add(self, skips: dict[str, float], items: Iterable[tuple[str, float]]) -> set[str]:
        now, new = self.seconds(), set()
        for endpoint_id, until in items:
            if max(self._full.get(endpoint_id, 0.0), self._blocked.get(endpoint_id, 0.0)) <= now:
                new.add(endpoint_id)
            skips[endpoint_id] = until
        return new

    def is_full(self, endpoint_id: str) -> bool:
        return endpoint_id in self._full

    def ended(self, endpoint_ids: Iterable[str]) -> None:
        """Requests of this worker to these endpoints ended, or others handed slots over: ask again."""
        for endpoint_id in endpoint_ids:
            self._full.pop(endpoint_id, None)

    def current(self) -> list[str]:
        now = self.seconds()
        for skips in (self._full, self._blocked):
            for endpoint_id in [e for e, until in skips.items() if until <= now]:
                del skips[endpoint_id]
        return list(self._full.keys() | self._blocked.keys())

    def next_change(self) -> float | None:
        """Seconds until the first skip ends, None when nothing is skipped."""
        ends = [*self._full.values(), *self._blocked.values()]
        return max(0.0, min(ends) - self.seconds()) if ends else None

    def __bool__(self) -> bool:
        return bool(self._full or self._blocked)
