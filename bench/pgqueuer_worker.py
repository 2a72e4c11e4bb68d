"""pgqueuer running the benchmark's signed-webhook job: one worker process.

``python -m bench.pgqueuer_worker URL SETTINGS_JSON``: a pgqueuer ``QueueManager``
on an asyncpg connection (pgqueuer's own default driver and the one its
benchmark uses) with one entrypoint, ``deliver``, that signs and POSTs the job
(bench.signed_post) and raises if the receiver did not answer 2xx. SETTINGS_JSON
holds ``QueueManager.run``'s throughput settings (bench.queues.PGQUEUER). It
runs on uvloop, as pgqueuer's own ``pgq run`` does, prints ``ready`` once a
NOTIFY round trip through its listener worked, and stops on SIGTERM.
"""

import asyncio
import json
import logging
import signal
import sys
from datetime import timedelta
from typing import Any

import asyncpg
import orjson
import uvloop
from pgqueuer import AsyncpgDriver, Job, Queries, QueueManager

from bench import signed_post


async def main(url: str, settings: dict[str, Any]) -> None:
    logging.getLogger("pgqueuer").setLevel(logging.WARNING)  # no line per job, as the deliverer logs none
    conn = await asyncpg.connect(url)
    qm = QueueManager(Queries(AsyncpgDriver(conn)))
    async with signed_post.session(settings["max_concurrent_tasks"]) as client:

        @qm.entrypoint("deliver")
        async def deliver(job: Job) -> None:
            assert job.payload is not None
            if not await signed_post.deliver(client, orjson.loads(job.payload)):
                raise RuntimeError("the receiver did not answer 2xx")

        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, qm.shutdown.set)
        running = asyncio.create_task(qm.run(
            batch_size=settings["batch_size"], max_concurrent_tasks=settings["max_concurrent_tasks"],
            dequeue_timeout=timedelta(seconds=settings["dequeue_timeout_s"])))
        while not running.done():
            try:
                await qm.listener_healthy(timeout=timedelta(seconds=0.5))
                break
            except Exception:  # FailingListenerError until run() has set its listener up
                await asyncio.sleep(0.1)
        print("ready", flush=True)
        await running
    await conn.close()


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1], json.loads(sys.argv[2])))
