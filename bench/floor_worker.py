"""The database floor: about the least a PostgreSQL job queue can ask of the database per delivery.

``python -m bench.floor_worker URL`` is one worker process. Its queue is one
table (bench/queues.sql, ``floor_*``): a claim leases up to BATCH free jobs in
one ``UPDATE … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED LIMIT n)
RETURNING``, each job is signed and POSTed (bench.signed_post), and the done
ones are deleted in batches by a second connection, as the deliverer records
its outcomes. There is no log, no retry schedule, no endpoint state: a failed
send is simply retried when its lease runs out. Like the deliverer, it keeps
at most MAX_IN_FLIGHT sends going, claims again as soon as a claim came back
full or room frees up, and otherwise sleeps until a NOTIFY on ``bench_floor``
or POLL_INTERVAL. It runs on uvloop, as ``deliverer run`` does, prints ``ready``
once it listens, and stops on SIGTERM.
"""

import asyncio
import contextlib
import signal
import sys
from typing import Any

import psycopg
import uvloop

from bench import signed_post
from outbox import sqlfile

QUERIES = sqlfile.load("bench", "queues.sql")
CHANNEL = "bench_floor"
BATCH = 100  # the deliverer's DELIVERER_BATCH_SIZE
MAX_IN_FLIGHT = 200  # its DELIVERER_MAX_IN_FLIGHT
POLL_INTERVAL = 1.0  # its DELIVERER_POLL_INTERVAL
LEASE_SECONDS = 30.0
LINGER = 0.005  # as the deliverer's RECORD_LINGER: let finishing sends share a DELETE


class Floor:
    def __init__(self, url: str) -> None:
        self.url = url
        self.wake, self.room, self.finished = asyncio.Event(), asyncio.Event(), asyncio.Event()
        self.in_flight: set[asyncio.Task[None]] = set()
        self.done: list[int] = []

    async def run(self, stop: asyncio.Event) -> None:
        connect = psycopg.AsyncConnection.connect
        async with (await connect(self.url, autocommit=True) as claims, await connect(self.url, autocommit=True)
                    as deletes, await connect(self.url, autocommit=True) as listen,
                    signed_post.session(MAX_IN_FLIGHT) as client):
            await listen.execute(f"LISTEN {CHANNEL}")
            print("ready", flush=True)
            tasks = [asyncio.create_task(self._listen(listen)), asyncio.create_task(self._delete(deletes)),
                     asyncio.create_task(self._claim(claims, client))]
            await stop.wait()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, *self.in_flight, return_exceptions=True)

    async def _listen(self, conn: psycopg.AsyncConnection[Any]) -> None:
        async for _ in conn.notifies():
            self.wake.set()

    async def _claim(self, conn: psycopg.AsyncConnection[Any], client: Any) -> None:
        while True:
            room = MAX_IN_FLIGHT - len(self.in_flight)
            if room < BATCH // 2:
                self.room.clear()
                await _first(self.room, POLL_INTERVAL)
                continue
            limit = min(room, BATCH)
            self.wake.clear()
            cur = await conn.execute(QUERIES["floor_claim"], {"limit": limit, "lease_seconds": LEASE_SECONDS})
            rows = await cur.fetchall()
            for job_id, job in rows:
                task = asyncio.create_task(self._send(client, job_id, job))
                self.in_flight.add(task)
            if len(rows) < limit:
                await _first(self.wake, POLL_INTERVAL)

    async def _send(self, client: Any, job_id: int, job: dict[str, Any]) -> None:
        try:
            if await signed_post.deliver(client, job):
                self.done.append(job_id)
                self.finished.set()
        finally:
            self.in_flight.discard(asyncio.current_task())  # type: ignore[arg-type]
            self.room.set()

    async def _delete(self, conn: psycopg.AsyncConnection[Any]) -> None:
        while True:
            await self.finished.wait()
            await asyncio.sleep(LINGER)
            self.finished.clear()
            ids, self.done = self.done, []
            await conn.execute(QUERIES["floor_delete_done"], {"ids": ids})


async def _first(event: asyncio.Event, timeout: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout)


async def main(url: str) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await Floor(url).run(stop)


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1]))  # as `deliverer run` does
