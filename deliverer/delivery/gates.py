"""Gates: at most so many requests open at once from this worker to each endpoint.

A claim leases up to twice the endpoint's limit for this worker (its fair part of
the room the other workers leave, see claim_deliveries) and says what the limit
is; the gate holds the deliveries beyond it until requests end. So a slot is
refilled the moment its request ends, from deliveries already leased, not one
claim's round trip later: one endpoint with all the traffic keeps its slots busy
like many endpoints do. The other workers count this one's requests up to the
limit it announced (endpoint_flow.held), whatever it keeps ready behind the gate.

A delivery that cannot start while enough of its lease is left to finish the
request (the endpoint paused, or slower than its lease allows) is not sent: its
caller hands it back.
"""

import asyncio
from collections import defaultdict, deque


class Gates:
    """This worker's open requests per endpoint, against the limits its claims gave it."""

    def __init__(self) -> None:
        self._limits: dict[str, int] = {}
        self._open: dict[str, int] = defaultdict(int)
        self._queued: dict[str, deque[asyncio.Future[None]]] = defaultdict(deque)
        self.sending = 0  # requests open, all endpoints

    def limit(self, endpoint_id: str, limit: int) -> None:
        """The limit the last claim that looked at this endpoint gave this worker."""
        self._limits[endpoint_id] = limit
        self._admit(endpoint_id)

    def running_low(self, endpoint_id: str) -> bool:
        """Half its limit or less waits at the endpoint: time to claim more for it."""
        return 2 * len(self._queued[endpoint_id]) <= self._limits.get(endpoint_id, 0)

    async def enter(self, endpoint_id: str, *, within: float) -> bool:
        """Wait for a slot at the endpoint, at most ``within`` seconds; False if none came."""
        queued = self._queued[endpoint_id]
        if not queued and self._open[endpoint_id] < self._limits.get(endpoint_id, 0):
            self._open[endpoint_id] += 1
            self.sending += 1
            return True
        turn = asyncio.get_running_loop().create_future()
        queued.append(turn)
        try:
            await asyncio.wait_for(asyncio.shield(turn), timeout=max(0.0, within))
        except TimeoutError:
            if turn.done():
                return True  # admitted as the time ran out
            self._forget(endpoint_id, turn)
            return False
        except asyncio.CancelledError:
            if turn.done():
                self.leave(endpoint_id)
            else:
                self._forget(endpoint_id, turn)
            raise
        return True

    def _forget(self, endpoint_id: str, turn: asyncio.Future[None]) -> None:
        turn.cancel()
        self._queued[endpoint_id].remove(turn)

    def leave(self, endpoint_id: str) -> None:
        """A request to the endpoint ended: its slot goes to the next delivery waiting there."""
        self._open[endpoint_id] -= 1
        self.sending -= 1
        self._admit(endpoint_id)

    def _admit(self, endpoint_id: str) -> None:
        queued = self._queued[endpoint_id]
        while queued and self._open[endpoint_id] < self._limits.get(endpoint_id, 0):
            turn = queued.popleft()
            if not turn.done():
                self._open[endpoint_id] += 1
                self.sending += 1
                turn.set_result(None)
