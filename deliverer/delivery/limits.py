"""How many sends each endpoint may have in flight in this worker.

Adjusted like TCP congestion control: an endpoint starts small (the slow start),
gains one per success, which doubles its room every round trip while all goes
well, up to a ceiling; it is halved when the endpoint times out, cannot be
reached or answers 429/503. A slow or dead endpoint then holds a few of the
worker's sends, not all of them, even before its first timeout.
"""

import time

from deliverer.delivery import send
from deliverer.facts import ErrorClass


class EndpointLimits:
    """Each endpoint's room in this worker; an endpoint idle for ``FORGET_AFTER`` seconds starts small again."""

    FORGET_AFTER = 60.0
    SHRINK_ON = frozenset({ErrorClass.TIMEOUT, ErrorClass.CONNECT_ERROR})

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
