"""Endpoint limits with four real ``deliverer run`` processes against one database and one receiver.

The receiver counts the requests it has open at each path and when each arrived;
what the limits promise is checked against what it saw, not against what the
deliverers say of themselves.
"""

import asyncio
import signal
import time
from collections import defaultdict
from pathlib import Path

import psycopg
from aiohttp import web

import outbox
from tests.support import Receiver, add_endpoint, aeventually, webhook_test
from tests.support.processes import WorkerProcess

PROCESSES = 4


class Load:
    """Open requests and arrival times per path, as the receiver saw them."""

    def __init__(self) -> None:
        self.open: dict[str, int] = defaultdict(int)
        self.peak: dict[str, int] = defaultdict(int)
        self.arrivals: dict[str, list[float]] = defaultdict(list)

    def slow(self, receiver: Receiver, path: str, seconds: float) -> None:
        async def behaviour(request: web.Request, n: int) -> web.StreamResponse:
            self.open[path] += 1
            self.peak[path] = max(self.peak[path], self.open[path])
            self.arrivals[path].append(time.monotonic())
            try:
                # The behaviour under test: a receiver that takes its time. A request stops counting as
                # open when the sender gives up on it (aiohttp would let the handler run on).
                deadline = time.monotonic() + seconds
                while time.monotonic() < deadline and not _gone(request):  # noqa: ASYNC110 (no event says so)
                    await asyncio.sleep(min(0.02, seconds))
            finally:
                self.open[path] -= 1
            return web.Response(text="OK")
        receiver.behave(path, behaviour)

    def busiest_window(self, path: str, seconds: float) -> int:
        return busiest_window(self.arrivals[path], seconds)


def busiest_window(times: list[float], seconds: float) -> int:
    """The most of ``times`` that fall in any window ``seconds`` long."""
    times = sorted(times)
    return max((sum(1 for t in times[i:] if t - start < seconds) for i, start in enumerate(times)), default=0)


def _gone(request: web.Request) -> bool:
    return request.transport is None or request.transport.is_closing()


def publish(dsn: str, org_id: str, n: int) -> list[str]:
    with psycopg.connect(dsn) as conn:
        ids = outbox.publish_many(conn, [outbox.Event("webhook.test", webhook_test(), org_id)] * n)
        conn.commit()
    return ids


def set_limits(db: psycopg.Connection, endpoint_id: str, *, max_in_flight: int | None = None,
               rate_limit: float | None = None) -> None:
    db.execute("UPDATE webhook_endpoint SET max_in_flight = %s, rate_limit = %s WHERE id = %s",
               [max_in_flight, rate_limit, endpoint_id])
    db.commit()


async def run_workers(dsn: str, tmp_path: Path, **env: str) -> list[WorkerProcess]:
    workers = [WorkerProcess(dsn, f"w{i}", tmp_path, **env) for i in range(PROCESSES)]
    for worker in workers:
        await worker.start()
    for worker in workers:
        await worker.wait_started()
    return workers


async def stop(workers: list[WorkerProcess]) -> None:
    for worker in workers:
        worker.signal(signal.SIGTERM)
    for worker in workers:
        assert await worker.wait() == 0, worker.log()[-2000:]


async def test_max_in_flight_holds_across_four_processes(dsn: str, db: psycopg.Connection, receiver: Receiver,
                                                         tmp_path: Path) -> None:
    """An endpoint with max_in_flight 4 answering in 300 ms never has more than 4 requests open,
    whichever of four processes sends them, and every event arrives once."""
    load = Load()
    endpoint = add_endpoint(db, receiver, "/slow")
    set_limits(db, endpoint.id, max_in_flight=4)
    load.slow(receiver, "/slow", 0.3)
    ids = publish(dsn, "org_a", 40)
    workers = await run_workers(dsn, tmp_path)
    try:
        await receiver.wait_for(len(ids), timeout=60)
    finally:
        await stop(workers)
    assert sorted(receiver.event_ids("/slow")) == sorted(ids)
    assert load.peak["/slow"] <= 4
    assert load.peak["/slow"] >= 2, "the four processes never overlapped: the test proves nothing"


async def test_rate_limit_holds_across_four_processes(dsn: str, db: psycopg.Connection, receiver: Receiver,
                                                      tmp_path: Path) -> None:
    """At rate_limit 20/s, four processes together lease at most 20 a second (plus the bucket's 10), and the
    receiver sees that rate, give or take how long a request takes to leave a worker after its lease."""
    load = Load()
    endpoint = add_endpoint(db, receiver, "/rated")
    set_limits(db, endpoint.id, rate_limit=20)
    load.slow(receiver, "/rated", 0.0)
    ids = publish(dsn, "org_a", 90)
    workers = await run_workers(dsn, tmp_path, DELIVERER_POLL_INTERVAL="0.2")
    try:
        await receiver.wait_for(len(ids), timeout=60)
    finally:
        await stop(workers)
    assert sorted(receiver.event_ids("/rated")) == sorted(ids)
    arrivals = sorted(load.arrivals["/rated"])
    assert arrivals[-1] - arrivals[0] >= (len(ids) - 10) / 20 * 0.9, "delivered faster than the rate"
    # Tokens are spent when deliveries are leased, at the claim's clock; each send starts some milliseconds
    # after its lease and arrives some after that, more on a busy machine (a CI run once saw 51 at the
    # receiver): a quarter of a second of delay is allowed for, five requests at this rate.
    sent = [row[0].timestamp() for row in db.execute(
        "SELECT started_at FROM delivery_log WHERE endpoint_id = %s AND kind = 'attempt_finished'", [endpoint.id])]
    db.commit()
    assert len(sent) == len(ids)
    assert busiest_window(sent, 2.0) <= 20 * (2 + 0.25) + 10
    assert load.busiest_window("/rated", 2.0) <= 20 * (2 + 0.25) + 10


async def test_a_dead_endpoints_allowance_shrinks_and_a_healthy_ones_does_not(
        dsn: str, db: psycopg.Connection, receiver: Receiver, tmp_path: Path) -> None:
    """Timeouts halve a dead endpoint's shared allowance to one; a healthy endpoint beside it grows to its max,
    and the dead one never has more open than its allowance allowed."""
    load = Load()
    dead = add_endpoint(db, receiver, "/dead", org_id="org_dead")
    healthy = add_endpoint(db, receiver, "/ok", org_id="org_ok")
    load.slow(receiver, "/dead", 30)
    load.slow(receiver, "/ok", 0.0)
    publish(dsn, "org_dead", 40)
    ok_ids = publish(dsn, "org_ok", 300)
    workers = await run_workers(dsn, tmp_path, DELIVERER_HTTP_TIMEOUT="1", DELIVERER_LEASE_SECONDS="10")
    try:
        def dead_at_one() -> bool:
            row = db.execute("SELECT allowance FROM endpoint_flow WHERE endpoint_id = %s", [dead.id]).fetchone()
            db.commit()
            return row is not None and row[0] == 1 and len(receiver.to("/dead")) > 4
        await aeventually(dead_at_one, "the dead endpoint's allowance to fall to 1", timeout=60, interval=0.1)
        await aeventually(lambda: len(receiver.to("/ok")) >= len(ok_ids), "every healthy event", timeout=60,
                         interval=0.1)
    finally:
        await stop(workers)
    allowances = dict(db.execute("SELECT endpoint_id, allowance FROM endpoint_flow").fetchall())
    assert allowances[dead.id] == 1
    assert allowances[healthy.id] > 4
    assert sorted(receiver.event_ids("/ok")) == sorted(ok_ids)
    assert load.peak["/dead"] <= 4  # the initial allowance: it only ever shrank
