"""Ordered delivery: an endpoint with ordering "fifo" gets one request at a time per ordering key, in publish order.

The step-by-step tests drive claims with a ``FakeClock``; the property at the end runs
three workers at once against a receiver that fails at random, in real time.
"""

import asyncio
import itertools
import random
import time
import uuid
from collections import defaultdict

import psycopg
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import outbox
from deliverer.delivery import limits
from deliverer.delivery.worker import Claimed, Worker
from deliverer.dev.receiver import EVENT_ID
from deliverer.history import projection, replay
from deliverer.registry import endpoints
from tests.support import FakeClock, Receiver, aeventually, settings_for, webhook_test

LEASE = 30


def fifo_endpoint(db: psycopg.Connection, receiver: Receiver, path: str, *, org_id: str = "org_a",
                  ordering: str = "fifo") -> endpoints.Endpoint:
    endpoint = endpoints.add(db, org_id=org_id, url=receiver.url(path), allow_insecure=True, ordering=ordering)
    assert endpoint.secret is not None
    receiver.secrets[path] = endpoint.secret
    return endpoint


def publish(dsn: str, *keys: str | None, org_id: str = "org_a") -> list[str]:
    """One transaction per event, committed in the order given: that is publish order."""
    ids = []
    with psycopg.connect(dsn) as conn:
        for key in keys:
            ids.append(outbox.publish(conn, "webhook.test", webhook_test(), org_id=org_id, ordering_key=key))
            conn.commit()
    return ids


def events(claimed: list[Claimed]) -> list[str]:
    return sorted(f"evt_{c.event_id.hex}" for c in claimed)


async def claim(worker: Worker, limit: int = 20) -> list[Claimed]:
    """What one claim takes now (empty: nothing may go yet)."""
    # Every claim looks at every endpoint: what an earlier claim learnt to skip is forgotten.
    worker.claimer.skips = limits.Skips(0.0, seconds=time.monotonic)
    return await worker.claim(limit)


async def claim_next(worker: Worker, limit: int = 20) -> list[Claimed]:
    """What the first claim that takes anything takes. Transaction ids are the server's: a write
    transaction still open in another database (another test's, autovacuum's) holds ordered
    deliveries back until it ends, so one claim may find nothing yet."""
    return await aeventually(lambda: claim(worker, limit), "a claim that takes something", timeout=30,
                             interval=0.05)


async def deliver(worker: Worker, claimed: list[Claimed]) -> None:
    await worker.record([await worker.attempt(c) for c in claimed])


class TestOneAtATime:
    async def test_each_waits_until_the_one_before_is_delivered(
            self, dsn: str, db: psycopg.Connection, receiver: Receiver, clock: FakeClock) -> None:
        fifo_endpoint(db, receiver, "/fifo")
        first, second, third = publish(dsn, None, None, None)
        async with Worker(settings_for(dsn), clock=clock) as worker:
            head = await claim_next(worker)
            assert events(head) == [first] and head[0].ordered
            assert await claim(worker) == [], "the next went while the first was in flight"
            await deliver(worker, head)
            for expected in (second, third):
                head = await claim_next(worker)
                assert events(head) == [expected]
                await deliver(worker, head)
        assert receiver.event_ids() == [first, second, third]

    async def test_other_endpoints_and_unordered_ones_are_not_held_back(
            self, dsn: str, db: psycopg.Connection, receiver: Receiver, clock: FakeClock) -> None:
        fifo_endpoint(db, receiver, "/fifo")
        fifo_endpoint(db, receiver, "/parallel", ordering="none")
        published = publish(dsn, None, None, None)
        async with Worker(settings_for(dsn), clock=clock) as worker:
            claimed = await claim_next(worker)
        by_path = defaultdict(list)
        for c in claimed:
            by_path[c.url.rsplit("/", 1)[1]].append(f"evt_{c.event_id.hex}")
        assert {path: sorted(ids) for path, ids in by_path.items()} == {
            "fifo": published[:1], "parallel": sorted(published)}
        assert not any(c.ordered for c in claimed if c.url.endswith("/parallel"))

    async def test_keys_proceed_in_parallel_each_in_order(
            self, dsn: str, db: psycopg.Connection, receiver: Receiver, clock: FakeClock) -> None:
        fifo_endpoint(db, receiver, "/fifo")
        a1, b1, a2, none1, b2 = publish(dsn, "acct_a", "acct_b", "acct_a", None, "acct_b")
        async with Worker(settings_for(dsn), clock=clock) as worker:
            heads = await claim_next(worker)
            assert events(heads) == sorted([a1, b1, none1])
            await deliver(worker, heads)
            assert events(await claim_next(worker)) == sorted([a2, b2])

    async def test_a_retry_holds_its_key_until_it_fails_for_good(
            self, dsn: str, db: psycopg.Connection, receiver: Receiver, clock: FakeClock) -> None:
        fifo_endpoint(db, receiver, "/fifo")
        receiver.fail_first("/fifo", 2)
        first, second = publish(dsn, None, None)
        async with Worker(settings_for(dsn, retry_delays=(5.0,)), clock=clock) as worker:
            await deliver(worker, await claim_next(worker))  # attempt 1 fails: a retry in 5 s
            assert await claim(worker) == [], "the next overtook a retry"
            assert worker.next_due_in is not None and 4 < worker.next_due_in <= 5, \
                "a worker must sleep until the retry, not spin on the one behind it"
            clock.advance(6)
            retried = await claim_next(worker)
            assert events(retried) == [first] and retried[0].attempt == 2
            await deliver(worker, retried)  # attempt 2 of 2 fails: failed for good
            assert events(await claim_next(worker)) == [second]
        assert db.execute("SELECT state FROM delivery_current ORDER BY event_id").fetchall() == [
            ("failed",), ("in_flight",)]

    async def test_a_crash_mid_send_redelivers_the_same_head_never_a_later_one(
            self, dsn: str, db: psycopg.Connection, receiver: Receiver, clock: FakeClock) -> None:
        fifo_endpoint(db, receiver, "/fifo")
        first, _ = publish(dsn, None, None)
        async with Worker(settings_for(dsn, worker_id="A", lease_seconds=LEASE), clock=clock) as a, \
                   Worker(settings_for(dsn, worker_id="B", lease_seconds=LEASE), clock=clock) as b:
            assert events(await claim_next(a)) == [first]  # A dies with it in flight
            clock.advance(LEASE - 1)
            assert await claim(b) == []
            clock.advance(2)
            again = await claim_next(b)
            assert events(again) == [first] and again[0].attempt == 2


class TestABacklog:
    async def test_a_backlog_larger_than_a_claims_window_drains_in_order(
            self, dsn: str, db: psycopg.Connection, receiver: Receiver) -> None:
        """The deliveries waiting behind others fill a claim's window of oldest rows: they are put aside, and the
        end of each one brings the next of its key back, so every key keeps going to the end."""
        fifo_endpoint(db, receiver, "/fifo")
        with psycopg.connect(dsn) as conn:
            ids = outbox.publish_many(conn, [outbox.Event("webhook.test", webhook_test(), "org_a",
                                                          ordering_key=f"key_{i % 3}") for i in range(120)])
        stop = asyncio.Event()
        async with Worker(settings_for(dsn, batch_size=5)) as worker:  # a window of 20 rows
            run = asyncio.create_task(worker.run(stop))
            await receiver.wait_until(lambda: len(receiver.delivered()) == len(ids), "every delivery", timeout=60)
            stop.set()
            await run
        for key in range(3):
            assert [e for e in receiver.event_ids() if e in ids[key::3]] == ids[key::3]


class TestPublishOrderIsCommitOrder:
    async def test_a_later_transaction_waits_for_an_earlier_one_still_open(
            self, dsn: str, db: psycopg.Connection, receiver: Receiver, clock: FakeClock) -> None:
        """The earlier transaction (lower id) may still commit an event that comes first: nothing goes until it
        ends, and then its event goes first, although it committed last."""
        fifo_endpoint(db, receiver, "/fifo")
        with psycopg.connect(dsn) as earlier:
            early = outbox.publish(earlier, "webhook.test", webhook_test(), org_id="org_a")  # takes its txid now
            [late] = publish(dsn, None)
            async with Worker(settings_for(dsn), clock=clock) as worker:
                assert await claim(worker) == [], "sent past a transaction that could still put one before it"
                earlier.commit()
                head = await claim_next(worker)
                assert events(head) == [early]
                await deliver(worker, head)
                assert events(await claim_next(worker)) == [late]

    async def test_events_of_one_transaction_go_in_the_order_published(
            self, dsn: str, db: psycopg.Connection, receiver: Receiver, clock: FakeClock) -> None:
        fifo_endpoint(db, receiver, "/fifo")
        with psycopg.connect(dsn) as conn:
            ids = outbox.publish_many(conn, [outbox.Event("webhook.test", webhook_test(), "org_a")] * 5)
            ids.append(outbox.publish(conn, "webhook.test", webhook_test(), org_id="org_a"))
        async with Worker(settings_for(dsn), clock=clock) as worker:
            for expected in ids:
                head = await claim_next(worker)
                assert events(head) == [expected]
                await deliver(worker, head)
        assert receiver.event_ids() == ids


class TestReplayAndRebuild:
    async def test_a_replay_goes_after_what_its_key_has_waiting(
            self, dsn: str, db: psycopg.Connection, receiver: Receiver, clock: FakeClock) -> None:
        fifo_endpoint(db, receiver, "/fifo")
        first, second = publish(dsn, None, None)
        async with Worker(settings_for(dsn), clock=clock) as worker:
            await deliver(worker, await claim_next(worker))
            [delivery_id] = db.execute("SELECT delivery_id FROM delivery_log WHERE kind = 'attempt_finished'"
                                       ).fetchone() or [None]
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                assert await replay.replay(conn, [delivery_id], org_id=None, actor="test", now=clock())
            head = await claim_next(worker)
            assert events(head) == [second]
            await deliver(worker, head)
            assert events(await claim_next(worker)) == [first]

    async def test_a_rebuilt_queue_keeps_each_keys_order(
            self, dsn: str, db: psycopg.Connection, receiver: Receiver, clock: FakeClock) -> None:
        fifo_endpoint(db, receiver, "/fifo")
        ids = publish(dsn, "k", "k", "k")
        with psycopg.connect(dsn) as conn:
            projection.rebuild(conn)
            assert projection.diff(conn) == []
        async with Worker(settings_for(dsn), clock=clock) as worker:
            for expected in ids:
                head = await claim_next(worker)
                assert events(head) == [expected]
                await deliver(worker, head)


class TestTheSetting:
    def test_ordering_is_none_or_fifo(self, db: psycopg.Connection) -> None:
        with pytest.raises(endpoints.EndpointError, match='ordering must be "none"') as refused:
            endpoints.add(db, org_id="org_a", url="https://receiver.example/hook", ordering="lifo")
        assert refused.value.field == "ordering"

    async def test_switching_an_endpoint_to_fifo_orders_what_is_published_from_then_on(
            self, dsn: str, db: psycopg.Connection, receiver: Receiver, clock: FakeClock) -> None:
        endpoint = fifo_endpoint(db, receiver, "/hook", ordering="none")
        before = publish(dsn, None, None)
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            updated = await endpoints.update(conn, endpoint.id, None, ordering="fifo")
        assert updated is not None and updated.ordering == "fifo"
        after = publish(dsn, None, None)
        async with Worker(settings_for(dsn), clock=clock) as worker:
            assert events(await claim_next(worker)) == sorted([*before, after[0]])


class Flaky:
    """A receiver behaviour that fails at random, noting when each request to a key began and ended."""

    def __init__(self, seed: int, failure_rate: float, key_of: dict[str, str]) -> None:
        self.random = random.Random(seed)
        self.failure_rate = failure_rate
        self.key_of = key_of
        # key -> (start, end, event id, status) of each request
        self.spans: dict[str, list[tuple[float, float, str, int]]] = defaultdict(list)

    async def __call__(self, request: web.Request, n: int) -> web.StreamResponse:
        start = time.perf_counter()
        event_id = request.headers[EVENT_ID]
        await asyncio.sleep(self.random.uniform(0, 0.005))
        status = 500 if self.random.random() < self.failure_rate else 200
        self.spans[self.key_of.get(event_id, "?")].append((start, time.perf_counter(), event_id, status))
        return web.Response(status=status)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(keys=st.lists(st.sampled_from(["a", "b", "c", None]), min_size=1, max_size=30),
       batch=st.integers(1, 4), failure_rate=st.sampled_from([0.0, 0.3, 0.6]), seed=st.integers(0, 2**32))
async def test_concurrent_workers_keep_each_keys_order_through_random_failures(
        dsn: str, db: psycopg.Connection, receiver: Receiver, keys: list[str | None], batch: int,
        failure_rate: float, seed: int) -> None:
    """Three workers, a receiver failing at random, events published in batches of one transaction each:
    per key, no request starts before the one before it ended, and the first successful receipts are in
    publish order (an event that failed for good is passed, as fifo promises)."""
    org = f"org_{uuid.uuid4().hex[:8]}"
    path = f"/{org}"
    fifo_endpoint(db, receiver, path, org_id=org)
    key_of: dict[str, str] = {}
    published: list[str] = []
    flaky = Flaky(seed, failure_rate, key_of)
    receiver.behave(path, flaky)
    stop = asyncio.Event()
    workers = [Worker(settings_for(dsn, worker_id=f"{org}-{n}", retry_delays=(0.01, 0.01), poll_interval=0.05))
               for n in range(3)]
    for worker in workers:
        await worker.__aenter__()
    runs = [asyncio.create_task(w.run(stop)) for w in workers]
    try:
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            for i in range(0, len(keys), batch):
                chunk = keys[i:i + batch]
                ids = await outbox.apublish_many(
                    conn, [outbox.Event("webhook.test", webhook_test(), org, ordering_key=k) for k in chunk])
                await conn.commit()
                key_of.update(zip(ids, (k or "" for k in chunk), strict=True))
                published += ids

        def settled() -> bool:
            return db.execute("SELECT count(*) FROM delivery_queue q JOIN webhook_endpoint w ON w.id = q.endpoint_id "
                              "WHERE w.org_id = %s", [org]).fetchone() == (0,)
        await aeventually(settled, "every delivery delivered or failed for good", timeout=60, interval=0.05)
    finally:
        stop.set()
        await asyncio.gather(*runs)
        for worker in workers:
            await worker.__aexit__(None, None, None)

    order = {event_id: n for n, event_id in enumerate(published)}
    for key, spans in flaky.spans.items():
        spans.sort()
        for (_, ended, before, _), (started, _, after, _) in itertools.pairwise(spans):
            assert started >= ended, f"key {key!r}: {after} began before {before} was answered"
        first_success = [event_id for _, _, event_id, status in spans if status == 200]
        first_success = list(dict.fromkeys(first_success))
        assert first_success == sorted(first_success, key=order.__getitem__), f"key {key!r} out of order"
    if failure_rate == 0.0:
        assert {e for spans in flaky.spans.values() for *_, e, _ in spans} == set(published)
