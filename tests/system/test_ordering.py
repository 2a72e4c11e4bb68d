"""Ordered delivery with three real ``deliverer run`` processes, one of them killed mid-send, and a receiver
that fails at random: what the order promises is checked against what the receiver saw."""

import asyncio
import itertools
import random
import signal
import time
from collections import defaultdict
from pathlib import Path

import psycopg
from aiohttp import web

import outbox
from deliverer.dev.receiver import EVENT_ID
from deliverer.registry import endpoints
from tests.support import Receiver, aeventually, webhook_test
from tests.support.processes import WorkerProcess

KEYS = 5
EVENTS = 150


async def test_three_processes_and_a_crash_keep_each_keys_order(dsn: str, db: psycopg.Connection,
                                                               receiver: Receiver, tmp_path: Path) -> None:
    endpoint = endpoints.add(db, org_id="org_a", url=receiver.url("/fifo"), allow_insecure=True, ordering="fifo")
    assert endpoint.secret is not None
    receiver.secrets["/fifo"] = endpoint.secret
    key_of: dict[str, str] = {}
    spans: dict[str, list[tuple[float, float, str, int]]] = defaultdict(list)  # key -> (start, end, event, status)
    chance = random.Random(7)
    holding = asyncio.Event()  # while set, requests go unanswered: a worker killed then dies mid-send

    async def flaky(request: web.Request, n: int) -> web.StreamResponse:
        start = time.perf_counter()
        await asyncio.sleep(chance.uniform(0, 0.02))
        while holding.is_set():  # noqa: ASYNC110 (a plain flag the test flips)
            await asyncio.sleep(0.01)
        status = 500 if chance.random() < 0.3 else 200
        event_id = request.headers[EVENT_ID]
        spans[key_of[event_id]].append((start, time.perf_counter(), event_id, status))
        return web.Response(status=status)
    receiver.behave("/fifo", flaky)

    with psycopg.connect(dsn) as conn:
        keys = [f"acct_{i % KEYS}" for i in range(EVENTS)]
        ids = outbox.publish_many(conn, [outbox.Event("webhook.test", webhook_test(), "org_a", ordering_key=k)
                                         for k in keys])
    key_of.update(zip(ids, keys, strict=True))
    env = {"DELIVERER_RETRY_DELAYS": "0.05,0.05,0.05", "DELIVERER_HTTP_TIMEOUT": "1",
           "DELIVERER_LEASE_SECONDS": "6", "DELIVERER_POLL_INTERVAL": "0.5"}
    workers = [WorkerProcess(dsn, f"w{i}", tmp_path, **env) for i in range(3)]
    for worker in workers:
        await worker.start()
    try:
        await receiver.wait_for(EVENTS // 3, timeout=60)
        holding.set()

        def a_holder() -> str | None:
            row = db.execute("SELECT leased_by FROM delivery_queue WHERE leased_by IS NOT NULL LIMIT 1").fetchone()
            return None if row is None else str(row[0])
        holder = await aeventually(a_holder, "a worker holding leases", timeout=30, interval=0.01)
        victim = next(w for w in workers if w.name == holder)
        victim.signal(signal.SIGKILL)  # what it holds now is sent again when the leases run out
        await victim.wait()
        lost_leases = db.execute("SELECT count(*) FROM delivery_queue WHERE leased_by = %s",
                                 [victim.name]).fetchone()
        holding.clear()

        def settled() -> bool:
            return db.execute("SELECT count(*) FROM delivery_queue").fetchone() == (0,)
        await aeventually(settled, "every delivery delivered or failed for good", timeout=120, interval=0.2)
    finally:
        survivors = [w for w in workers if w.running]
        for worker in survivors:
            worker.signal(signal.SIGTERM)
        for worker in survivors:
            assert await worker.wait() == 0, worker.log()[-2000:]

    order = {event_id: n for n, event_id in enumerate(ids)}
    delivered = {f"evt_{e.hex}" for (e,) in db.execute(
        "SELECT event_id FROM delivery_state WHERE state = 'delivered'")}
    for key, seen in spans.items():
        seen.sort()
        for (_, ended, before, _), (started, _, after, _) in itertools.pairwise(seen):
            # The one exception allowed: the same event again, sent after a lease ran out.
            assert started >= ended or before == after, f"{key}: {after} began before {before} was answered"
        first_success = list(dict.fromkeys(e for _, _, e, status in seen if status == 200))
        assert first_success == sorted(first_success, key=order.__getitem__), f"{key} out of order"
    assert {e for seen in spans.values() for _, _, e, status in seen if status == 200} == delivered
    assert len(delivered) > EVENTS // 2  # the random failures left most delivered
    abandoned = db.execute("SELECT count(*) FROM delivery_log WHERE kind = 'attempt_abandoned' "
                           "AND error_message LIKE %s", [f"worker {victim.name} %"]).fetchone()
    assert lost_leases is not None and lost_leases[0] > 0 and abandoned == lost_leases, \
        "the killed worker's leases were taken over, each recorded as abandoned"
