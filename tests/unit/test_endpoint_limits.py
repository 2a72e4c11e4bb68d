"""The per-endpoint room of one worker, on its own: slow start, halving on trouble, forgetting idle endpoints.

How the room shares a worker between a hanging endpoint and healthy ones is in tests/integration/test_security.py
and tests/system/test_security.py.
"""

import time

import pytest

from deliverer.delivery import send
from deliverer.delivery.worker import EndpointLimits


class TestEndpointLimits:
    """The per-endpoint room in one worker: slow start, halving on trouble, forgetting idle endpoints."""

    @staticmethod
    def _finish(limits: EndpointLimits, endpoint_id: str, outcome: send.Outcome) -> None:
        limits.started(endpoint_id)
        limits.finished(endpoint_id, outcome)

    def test_a_new_endpoint_starts_small_and_earns_room_with_successes(self) -> None:
        limits = EndpointLimits(ceiling=50)
        assert limits.cap("ep_new") == 4  # the default initial room
        for _ in range(10):
            self._finish(limits, "ep_new", send.Outcome(True, 1.0, http_status=200))
        assert limits.cap("ep_new") == 4 + 10
        for _ in range(100):
            self._finish(limits, "ep_new", send.Outcome(True, 1.0, http_status=200))
        assert limits.cap("ep_new") == 50
        listed, free, full = limits.rooms()
        assert (listed, free, full) == (["ep_new"], [50], [])

    def test_timeouts_and_throttling_halve_the_room(self) -> None:
        limits = EndpointLimits(ceiling=50)
        limits.caps["ep"] = 40
        self._finish(limits, "ep", send.Outcome(False, 5000.0, error_class="timeout"))
        self._finish(limits, "ep", send.Outcome(False, 1.0, http_status=429, error_class="http_4xx"))
        self._finish(limits, "ep", send.Outcome(False, 1.0, http_status=500, error_class="http_5xx"))
        assert limits.cap("ep") == 10  # 500 says nothing about load: unchanged
        for _ in range(10):
            self._finish(limits, "ep", send.Outcome(False, 1.0, error_class="connect_error"))
        assert limits.cap("ep") == 1

    def test_an_endpoint_with_no_room_is_excluded_from_claims(self) -> None:
        limits = EndpointLimits(ceiling=50)
        for _ in range(4):
            limits.started("ep_busy")
        limits.started("ep_other")
        assert limits.rooms() == (["ep_other"], [4 - 1], ["ep_busy"])

    def test_an_idle_endpoint_is_forgotten_and_starts_small_again(self, monkeypatch: pytest.MonkeyPatch) -> None:
        limits = EndpointLimits(ceiling=50)
        limits.caps["ep"] = 50
        self._finish(limits, "ep", send.Outcome(True, 1.0, http_status=200))
        now = time.monotonic()
        monkeypatch.setattr(time, "monotonic", lambda: now + EndpointLimits.FORGET_AFTER + 1)
        assert limits.rooms() == ([], [], [])
        assert limits.cap("ep") == 4
