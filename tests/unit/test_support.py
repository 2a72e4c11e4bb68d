"""The tools the tests, the demo and the fault suite share (deliverer.dev): waiting, the receiver, the clock.

A test helper that passes when it should fail hides every bug behind it, so
these are tested like the code they help test.
"""

import asyncio
import hashlib
import hmac
import time
from datetime import UTC, datetime

import aiohttp
import pytest

from tests.support import FakeClock, NeverHappened, Receiver, aeventually, eventually, hold_until, respond


class TestEventually:
    def test_returns_the_first_truthy_value(self) -> None:
        calls = iter([0, None, "", 7])
        assert eventually(lambda: next(calls), "a number", interval=0) == 7

    def test_fails_naming_what_it_waited_for_and_the_last_ignored_error(self) -> None:
        def refused() -> bool:
            raise ConnectionRefusedError("nobody listens")
        with pytest.raises(NeverHappened, match=r"after 0.1 s waiting for the server to listen "
                                                r"\(last error: ConnectionRefusedError: nobody listens\)"):
            eventually(refused, "the server to listen", timeout=0.1, interval=0.01, ignoring=(OSError,))

    def test_a_description_is_asked_for_when_it_fails(self) -> None:
        state = {"seen": 0}

        def look() -> bool:
            state["seen"] += 1
            return False
        with pytest.raises(NeverHappened, match=r"3 requests \(seen [1-9]\d* times\)"):
            eventually(look, lambda: f"3 requests (seen {state['seen']} times)", timeout=0.05, interval=0.01)

    def test_an_error_it_does_not_ignore_propagates_at_once(self) -> None:
        def exited() -> bool:
            raise AssertionError("the worker exited")
        started = time.monotonic()
        with pytest.raises(AssertionError, match="the worker exited"):
            eventually(exited, "anything", timeout=10, ignoring=(OSError,))
        assert time.monotonic() - started < 5

    async def test_awaits_a_coroutine_predicate(self) -> None:
        answers = iter([False, True])

        async def check() -> bool:
            return next(answers)
        assert await aeventually(check, "the second answer", interval=0) is True

    async def test_a_wake_event_cuts_the_interval_short(self) -> None:
        """With ``wake``, a change is seen when it happens, not at the next poll."""
        wake, state = asyncio.Event(), {"done": False}

        async def change_soon() -> None:
            await asyncio.sleep(0.05)  # the change being waited for, made by another task a moment later
            state["done"] = True
            wake.set()
        started = time.monotonic()
        changer = asyncio.create_task(change_soon())
        await aeventually(lambda: state["done"], "the change", interval=30, wake=wake)
        await changer
        assert time.monotonic() - started < 10

    async def test_async_failure_names_what_it_waited_for(self) -> None:
        with pytest.raises(NeverHappened, match="waiting for the queue to drain"):
            await aeventually(lambda: False, "the queue to drain", timeout=0.05, interval=0.01)


def signed(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class TestReceiver:
    async def test_records_arrivals_at_once_and_statuses_when_answered(self) -> None:
        release = asyncio.Event()
        async with Receiver() as receiver, aiohttp.ClientSession() as http:
            receiver.behave("/held", hold_until(release, first=1))
            receiver.fail_first("/flaky", 1, status=503)

            async def post_held() -> int:
                async with http.post(receiver.url("/held"), data=b"{}",
                                     headers={"X-DocExtract-Event-Id": "evt_1"}) as response:
                    return response.status
            held = asyncio.create_task(post_held())
            await receiver.wait_for(1)
            [arrived] = receiver.requests
            assert (arrived.path, arrived.event_id, arrived.status) == ("/held", "evt_1", None)
            release.set()
            assert await held == 200
            for _ in range(2):
                async with http.post(receiver.url("/flaky"), data=b"{}",
                                     headers={"X-DocExtract-Event-Id": "evt_2",
                                              "X-DocExtract-Delivery-Attempt": "1"}) as response:
                    await response.read()
        assert [(r.path, r.status) for r in receiver.requests] == [("/held", 200), ("/flaky", 503), ("/flaky", 200)]
        assert receiver.arrivals == {"/held": 1, "/flaky": 2}
        assert receiver.delivered() == {("evt_1", "/held"), ("evt_2", "/flaky")}
        assert receiver.requests[1].attempt == 1 and receiver.requests[1].body == b"{}"

    async def test_checks_signatures_as_the_docs_do_and_can_refuse_bad_ones(self) -> None:
        body = b'{"event":"webhook.test","data":{}}'
        async with Receiver(reject_bad_signatures=True) as receiver, aiohttp.ClientSession() as http:
            receiver.secrets["/hook"] = "whsec_right"
            receiver.behave("/hook", respond(202, "accepted"))
            statuses = []
            for secret in ("whsec_right", "whsec_wrong"):
                async with http.post(receiver.url("/hook"), data=body,
                                     headers={"X-DocExtract-Signature": signed(secret, body)}) as response:
                    statuses.append((response.status, await response.text()))
            async with http.post(receiver.url("/unsigned"), data=body) as response:
                statuses.append((response.status, await response.text()))
        assert statuses == [(202, "accepted"), (401, "Invalid signature"), (200, "OK")]
        assert [r.signature_ok for r in receiver.requests] == [True, False, None]

    async def test_without_content_it_keeps_only_the_ids(self) -> None:
        headers = {"X-DocExtract-Delivery-Id": "dlv_1", "X-DocExtract-Delivery-Attempt": "x"}
        async with Receiver(keep_content=False) as receiver, aiohttp.ClientSession() as http, \
                http.post(receiver.url("/hook"), data=b"a body", headers=headers) as response:
            assert response.status == 200
        [request] = receiver.requests
        assert (request.delivery_id, request.attempt, request.headers, request.body) == ("dlv_1", 0, {}, b"")

    async def test_wait_for_fails_saying_how_many_arrived(self) -> None:
        async with Receiver() as receiver:
            with pytest.raises(NeverHappened, match=r"2 requests at http://127\.0\.0\.1:\d+ \(got 0\)"):
                await receiver.wait_for(2, timeout=0.1)


def test_the_fake_clock_moves_only_when_told() -> None:
    start = datetime(2024, 11, 23, 10, 0, tzinfo=UTC)
    clock = FakeClock(start)
    assert clock() == clock() == start
    assert clock.advance(90) == datetime(2024, 11, 23, 10, 1, 30, tzinfo=UTC) == clock()
    assert FakeClock()() > datetime.now(UTC)
