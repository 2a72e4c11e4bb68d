"""Endpoint limits shared by every worker: the adaptive allowance, max_in_flight, the rate limit, pauses.

Two ``Worker`` objects stand for two processes here (each its own connections and
worker id, one database); the multi-process tests with real ``deliverer run``
processes are in tests/system/test_endpoint_limits.py. Time is a ``FakeClock``.
"""

import asyncio
import uuid

import psycopg
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import outbox
from deliverer.delivery import limits
from deliverer.delivery.worker import Worker
from tests.support import FakeClock, Receiver, add_endpoint, aeventually, settings_for, webhook_test


def publish(db: psycopg.Connection, org_id: str, n: int) -> None:
    outbox.publish_many(db, [outbox.Event("webhook.test", webhook_test(), org_id)] * n)
    db.commit()


def flow(db: psycopg.Connection, endpoint_id: str, clock: FakeClock) -> dict[str, object]:
    """The endpoint's shared state, with the requests open as claims count them: leases not run out."""
    row = db.execute(OPEN_AND_FLOW, [clock(), endpoint_id]).fetchone()
    db.commit()
    assert row is not None, f"no endpoint_flow row for {endpoint_id}"
    return {"in_flight": row[0], "allowance": row[1], "paused_until": row[2]}


OPEN_AND_FLOW = """
    SELECT (SELECT count(*) FROM delivery_queue q
            WHERE q.endpoint_id = f.endpoint_id AND q.leased_by IS NOT NULL AND q.due_at > %s),
           f.allowance, f.paused_until
    FROM endpoint_flow f WHERE f.endpoint_id = %s"""


def set_flow(db: psycopg.Connection, endpoint_id: str, **values: object) -> None:
    for column, value in values.items():
        db.execute(f"UPDATE endpoint_flow SET {column} = %s WHERE endpoint_id = %s", [value, endpoint_id])
    db.commit()


def limit(db: psycopg.Connection, endpoint_id: str, *, max_in_flight: int | None = None,
          rate_limit: float | None = None) -> None:
    db.execute("UPDATE webhook_endpoint SET max_in_flight = %s, rate_limit = %s WHERE id = %s",
               [max_in_flight, rate_limit, endpoint_id])
    db.commit()


def answer(receiver: Receiver, path: str, status: int, headers: dict[str, str] | None = None) -> None:
    async def behaviour(request: web.Request, n: int) -> web.StreamResponse:
        return web.Response(status=status, headers=headers)
    receiver.behave(path, behaviour)


class TestTheAllowance:
    async def test_a_new_endpoint_starts_small_and_earns_room_with_successes(
            self, dsn: str, db: psycopg.Connection, receiver: Receiver, clock: FakeClock) -> None:
        """A new endpoint gets the initial allowance, one more per success, up to its max_in_flight."""
        endpoint = add_endpoint(db, receiver, "/ok")
        publish(db, "org_a", 200)
        async with Worker(settings_for(dsn), clock=clock) as worker:
            first = await worker.claim(100)
            assert len(first) == limits.INITIAL_ALLOWANCE
            await worker.record([await worker.attempt(c) for c in first])
            assert flow(db, endpoint.id, clock) == {"in_flight": 0, "allowance": 4 + 4, "paused_until": None}
            for _ in range(20):
                await worker.record([await worker.attempt(c) for c in await worker.claim(100)])
            assert flow(db, endpoint.id, clock)["allowance"] == 50  # DELIVERER_ENDPOINT_MAX_IN_FLIGHT

    async def test_timeouts_and_throttling_halve_the_allowance(
            self, dsn: str, db: psycopg.Connection, receiver: Receiver, clock: FakeClock) -> None:
        """A timeout, a 429 or a 503 halves the allowance (once a batch); a 500 says nothing about load."""
        endpoint = add_endpoint(db, receiver, "/ep")
        publish(db, "org_a", 10)
        async with Worker(settings_for(dsn, http_timeout=0.5, lease_seconds=10), clock=clock) as worker:
            await worker.claim(1)
            set_flow(db, endpoint.id, allowance=40)
            for status, allowance in ((429, 20), (503, 10), (500, 10)):
                answer(receiver, "/ep", status)
                [claimed] = await worker.claim(1)
                await worker.record([await worker.attempt(claimed)])
                assert flow(db, endpoint.id, clock)["allowance"] == allowance, status
            receiver.behave("/ep", _hang)
            [claimed] = await worker.claim(1)
            await worker.record([await worker.attempt(claimed)])
            assert flow(db, endpoint.id, clock)["allowance"] == 5

    async def test_an_idle_endpoint_starts_small_again(
            self, dsn: str, db: psycopg.Connection, receiver: Receiver, clock: FakeClock) -> None:
        """After a minute with nothing in flight, an endpoint starts again from the initial allowance."""
        endpoint = add_endpoint(db, receiver, "/ok")
        publish(db, "org_a", 1)
        async with Worker(settings_for(dsn), clock=clock) as worker:
            await worker.record([await worker.attempt(c) for c in await worker.claim(10)])
            set_flow(db, endpoint.id, allowance=50)
            publish(db, "org_a", 60)
            clock.advance(limits.IDLE_AFTER + 1)
            assert len(await worker.claim(100)) == limits.INITIAL_ALLOWANCE


async def _hang(request: web.Request, n: int) -> web.StreamResponse:
    await asyncio.sleep(60)  # the behaviour under test: a receiver that never answers in time
    return web.Response()


class TestAcrossWorkers:
    async def test_max_in_flight_holds_across_workers(
            self, dsn: str, db: psycopg.Connection, receiver: Receiver, clock: FakeClock) -> None:
        """Two workers together never lease more of an endpoint than its max_in_flight."""
        endpoint = add_endpoint(db, receiver, "/ep")
        limit(db, endpoint.id, max_in_flight=3)
        publish(db, "org_a", 20)
        async with Worker(settings_for(dsn, worker_id="A"), clock=clock) as a, \
                Worker(settings_for(dsn, worker_id="B"), clock=clock) as b:
            assert len(await a.claim(10)) == 3
            assert await b.claim(10) == []
            assert flow(db, endpoint.id, clock)["in_flight"] == 3

    async def test_a_crashed_workers_share_comes_back_when_its_leases_expire(
            self, dsn: str, db: psycopg.Connection, receiver: Receiver, clock: FakeClock) -> None:
        """A worker that dies holding an endpoint's every slot gives them back when its leases run out."""
        endpoint = add_endpoint(db, receiver, "/ep")
        limit(db, endpoint.id, max_in_flight=2)
        publish(db, "org_a", 2)
        async with Worker(settings_for(dsn, worker_id="A", lease_seconds=30), clock=clock) as a, \
                Worker(settings_for(dsn, worker_id="B"), clock=clock) as b:
            assert len(await a.claim(10)) == 2  # and A dies
            assert await b.claim(10) == []
            clock.advance(31)
            retaken = await b.claim(10)
            assert len(retaken) == 2 and {c.attempt for c in retaken} == {2}
            assert flow(db, endpoint.id, clock)["in_flight"] == 2
            await b.record([await b.attempt(c) for c in retaken])
            assert flow(db, endpoint.id, clock)["in_flight"] == 0
            publish(db, "org_a", 3)
            assert len(await b.claim(10)) == 2

    async def test_a_slot_is_free_when_its_request_ends_not_when_its_outcome_is_written(
            self, dsn: str, db: psycopg.Connection, receiver: Receiver, clock: FakeClock) -> None:
        """A worker refills the slots of requests that ended, outcomes still unwritten; others count them open."""
        endpoint = add_endpoint(db, receiver, "/ep")
        limit(db, endpoint.id, max_in_flight=3)
        publish(db, "org_a", 10)
        async with Worker(settings_for(dsn, worker_id="A"), clock=clock) as a, \
                Worker(settings_for(dsn, worker_id="B"), clock=clock) as b:
            first = await a.claim(10, slow_start=False)
            assert len(first) == 3
            a.recorder.add([await a.attempt(c) for c in first])  # answered; on their way to the log
            a.claimer.skips.ended([endpoint.id])  # as the worker's loop does when a request ends
            assert len(await a.claim(10, slow_start=False)) == 3
            assert await b.claim(10, slow_start=False) == []  # A's unwritten outcomes hold their leases
            assert flow(db, endpoint.id, clock)["in_flight"] == 6
            await a.record(a.recorder.pending)
            assert flow(db, endpoint.id, clock)["in_flight"] == 3

    async def test_workers_share_an_endpoint_one_of_them_filled(
            self, dsn: str, db: psycopg.Connection, receiver: Receiver, clock: FakeClock) -> None:
        """A worker held back by what another holds is counted among the sharers: the other takes only its
        part from then on, and the slots its outcomes free are handed over (a 'room' notification)."""
        endpoint = add_endpoint(db, receiver, "/ep")
        limit(db, endpoint.id, max_in_flight=4)
        publish(db, "org_a", 20)
        async with Worker(settings_for(dsn, worker_id="A"), clock=clock) as a, \
                Worker(settings_for(dsn, worker_id="B"), clock=clock) as b, \
                await psycopg.AsyncConnection.connect(dsn, autocommit=True) as listening:
            await listening.execute("LISTEN outbox_delivery")
            held = await a.claim(10, slow_start=False)
            assert len(held) == 4
            assert await b.claim(10, slow_start=False) == []
            assert db.execute("SELECT wanted_by FROM endpoint_flow").fetchone() == ("B",)
            db.commit()
            await a.record([await a.attempt(c) for c in held])
            notes = [n.payload async for n in listening.notifies(timeout=1.0)]
            assert notes == [f"room {endpoint.id} B"]
            assert len(await a.claim(10, slow_start=False)) == 2  # its part: half, B wants the rest
            b.listener._heard(notes[0])  # what B's listener does with it: stop skipping the endpoint
            assert len(await b.claim(10, slow_start=False)) == 2
            assert len(await a.claim(10, slow_start=False)) == 0
            assert flow(db, endpoint.id, clock)["in_flight"] == 4

    async def test_a_late_outcome_does_not_free_a_slot_twice(
            self, dsn: str, db: psycopg.Connection, receiver: Receiver, clock: FakeClock) -> None:
        """The outcome of a lease that was taken over is a late result: it closes nothing."""
        endpoint = add_endpoint(db, receiver, "/ep")
        limit(db, endpoint.id, max_in_flight=1)
        publish(db, "org_a", 1)
        async with Worker(settings_for(dsn, worker_id="A", lease_seconds=30), clock=clock) as a, \
                Worker(settings_for(dsn, worker_id="B", lease_seconds=30), clock=clock) as b:
            [stale] = await a.claim(10)
            late = await a.attempt(stale)
            clock.advance(31)
            [taken] = await b.claim(10)
            assert [r.kind for r in await a.record([late])] == ["late_result"]
            assert flow(db, endpoint.id, clock)["in_flight"] == 1
            await b.record([await b.attempt(taken)])
            assert flow(db, endpoint.id, clock)["in_flight"] == 0

    async def test_a_test_event_is_outside_the_limits(
            self, dsn: str, db: psycopg.Connection, receiver: Receiver, clock: FakeClock) -> None:
        """Recording a test event's outcome closes no claimed request."""
        from deliverer.history import ping
        from deliverer.registry import endpoints
        endpoint = add_endpoint(db, receiver, "/ep")
        publish(db, "org_a", 1)
        async with Worker(settings_for(dsn), clock=clock) as worker:
            assert len(await worker.claim(10)) == 1
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn, \
                    ping.Sender(settings_for(dsn), "api-test") as sender:
                target = await endpoints.target_by_url(conn, "org_a", endpoint.url)
                assert target is not None
                assert (await ping.send(conn, sender, target))["delivered"] is True
            assert flow(db, endpoint.id, clock)["in_flight"] == 1


class TestPausesAndRates:
    async def test_retry_after_on_429_pauses_the_whole_endpoint(
            self, dsn: str, db: psycopg.Connection, receiver: Receiver, clock: FakeClock) -> None:
        """A 429 with Retry-After stops every claim for the endpoint that long; other endpoints go on."""
        endpoint = add_endpoint(db, receiver, "/busy")
        add_endpoint(db, receiver, "/other", org_id="org_b")
        answer(receiver, "/busy", 429, {"Retry-After": "30"})
        publish(db, "org_a", 10)
        async with Worker(settings_for(dsn), clock=clock) as worker:
            [first] = await worker.claim(1)
            await worker.record([await worker.attempt(first)])
            assert flow(db, endpoint.id, clock)["paused_until"] is not None
            publish(db, "org_b", 1)
            assert [c.org_id for c in await worker.claim(10)] == ["org_b"]
            clock.advance(29)
            claimed = await worker.claim(10)
            assert all(c.endpoint_id != endpoint.id for c in claimed)
            clock.advance(2)
            assert any(c.endpoint_id == endpoint.id for c in await worker.claim(10))

    async def test_a_pause_stops_the_deliveries_waiting_at_the_gate_too(
            self, dsn: str, db: psycopg.Connection, receiver: Receiver) -> None:
        """A worker leases ahead of its limit; when a 429's Retry-After pauses the endpoint, the deliveries
        waiting behind the gate are not sent: they are handed back (no_room) before their leases run short."""
        endpoint = add_endpoint(db, receiver, "/busy")
        limit(db, endpoint.id, max_in_flight=1)
        answer(receiver, "/busy", 429, {"Retry-After": "60"})
        publish(db, "org_a", 3)
        stop = asyncio.Event()
        async with Worker(settings_for(dsn, lease_seconds=6, http_timeout=1)) as worker:
            run = asyncio.create_task(worker.run(stop))
            try:
                await aeventually(lambda: db.execute(
                    "SELECT count(*) FROM delivery_log WHERE error_class = 'no_room'").fetchone() == (2,),
                    "the two waiting deliveries to be handed back", timeout=15)
            finally:
                stop.set()
                await run
        assert len(receiver.requests) == 1
        assert flow(db, endpoint.id, FakeClock())["paused_until"] is not None

    async def test_the_rate_limit_spends_tokens_that_refill_with_time(
            self, dsn: str, db: psycopg.Connection, receiver: Receiver, clock: FakeClock) -> None:
        """At rate_limit 10/s a claim takes at most the bucket (5, half a second's worth), then 10 a second."""
        endpoint = add_endpoint(db, receiver, "/ep")
        limit(db, endpoint.id, rate_limit=10)
        publish(db, "org_a", 100)
        async with Worker(settings_for(dsn), clock=clock) as worker:
            assert len(await worker.claim(100, slow_start=False)) == 5
            assert await worker.claim(100, slow_start=False) == []
            clock.advance(0.3)
            assert len(await worker.claim(100, slow_start=False)) == 3


@pytest.mark.parametrize("ceiling", [1, 7, 50])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.tuples(st.integers(0, 60), st.booleans()), max_size=25),
       start=st.integers(1, 50))
def test_the_allowance_stays_between_one_and_the_ceiling(ceiling: int, batches: list[tuple[int, bool]],
                                                         start: int) -> None:
    """Whatever the outcomes, the allowance stays in [1, ceiling], and congestion never raises it."""
    allowance = min(start, ceiling)
    for successes, congested in batches:
        after = limits.allowance_after(allowance, successes=successes, congested=congested, ceiling=ceiling)
        assert 1 <= after <= ceiling
        assert after <= allowance if congested else after >= allowance
        allowance = after


@settings(max_examples=100, deadline=None)
@given(steps=st.lists(st.tuples(st.floats(0, 2), st.integers(0, 20)), max_size=40),
       rate=st.floats(0.5, 200))
def test_a_bucket_never_lets_a_window_exceed_its_rate(steps: list[tuple[float, int]], rate: float) -> None:
    """Spending at most the bucket, any stretch of time sees at most rate times its length plus the burst."""
    tokens, now, spent = limits.tokens_now(0.0, rate=rate, elapsed=3600), 0.0, []
    for elapsed, wanted in steps:
        now += elapsed
        tokens = limits.tokens_now(tokens, rate=rate, elapsed=elapsed)
        take = min(wanted, limits.free_room(allowance=10**6, in_flight=0, tokens=tokens, paused=False))
        tokens -= take
        spent.append((now, take))
    burst = max(1.0, rate / 2)
    for i, (start, _) in enumerate(spent):
        window = sum(take for at, take in spent[i:] if at - start <= 10)
        assert window <= rate * 10 + burst + 1e-6


class TestTheSqlFollowsTheModel:
    """Hypothesis drives claims, outcomes and time through the real statements, and the shared state
    must equal what ``deliverer.delivery.limits`` says at every step."""

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(ceiling=st.integers(1, 12), steps=st.lists(st.one_of(
        st.tuples(st.just("claim"), st.integers(1, 20)),
        st.tuples(st.just("finish"), st.integers(1, 20), st.sampled_from(["ok", "congested", "error"])),
        st.tuples(st.just("wait"), st.sampled_from([1.0, 30.0, limits.IDLE_AFTER + 1]))), min_size=1, max_size=12))
    async def test_claims_and_outcomes_keep_the_state_the_model_predicts(
            self, dsn: str, db: psycopg.Connection, ceiling: int, steps: list[tuple[object, ...]]) -> None:
        from datetime import timedelta

        from deliverer.delivery import send
        from deliverer.delivery.attempt import Result
        from deliverer.facts import ErrorClass
        from deliverer.registry import endpoints
        org = f"org_{uuid.uuid4().hex[:8]}"
        endpoint = endpoints.add(db, org_id=org, url="https://receiver.example/hook", allow_insecure=True)
        limit(db, endpoint.id, max_in_flight=ceiling)
        publish(db, org, 60)
        clock = FakeClock()
        outcomes = {"ok": send.Outcome(True, 1.0, http_status=200),
                    "congested": send.Outcome(False, 1.0, http_status=503, error_class=ErrorClass.HTTP_5XX),
                    "error": send.Outcome(False, 1.0, http_status=500, error_class=ErrorClass.HTTP_5XX)}
        in_flight, allowance, idle_since, open_ = 0, min(limits.INITIAL_ALLOWANCE, ceiling), clock(), []
        async with Worker(settings_for(dsn, worker_id=org, lease_seconds=3600), clock=clock) as worker:
            for step in steps:
                if step[0] == "claim":
                    if in_flight == 0 and clock() - idle_since > timedelta(seconds=limits.IDLE_AFTER):
                        allowance = min(limits.INITIAL_ALLOWANCE, ceiling)
                    worker.claimer.skips = limits.Skips(0.0, seconds=lambda: clock().timestamp())
                    got = await worker.claim(int(step[1]))
                    expected = min(int(step[1]), limits.free_room(allowance=allowance, in_flight=in_flight,
                                                                  tokens=None, paused=False))
                    assert len(got) == expected
                    open_ += got
                    in_flight += len(got)
                    if got:
                        idle_since = clock()
                elif step[0] == "finish" and open_:
                    done, open_ = open_[:int(step[1])], open_[int(step[1]):]
                    outcome = outcomes[str(step[2])]
                    await worker.record([Result(c, outcome, clock(), None if outcome.succeeded else 5.0)
                                         for c in done])
                    allowance = limits.allowance_after(allowance, successes=len(done) if outcome.succeeded else 0,
                                                       congested=step[2] == "congested", ceiling=ceiling)
                    in_flight -= len(done)
                elif step[0] == "wait":
                    clock.advance(float(step[1]))  # type: ignore[arg-type]
                row = db.execute(OPEN_AND_FLOW, [clock(), endpoint.id]).fetchone() \
                    or (0, allowance)  # no row before the first claim
                db.commit()
                assert row[0] == in_flight <= ceiling
                if step[0] != "wait":
                    assert row[1] == allowance, step
        # Examples share the database: what is left due must not fill the next one's claim window.
        db.execute("DELETE FROM delivery_queue WHERE org_id = %s", [org])
        db.commit()
