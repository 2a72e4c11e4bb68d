"""Scenario 1: deliverer processes are SIGKILLed at random while they deliver, and restarted.

Each incarnation of a worker gets its own id, so the log says which one was
killed. A kill between a send and its recording is the one way the design
allows a duplicate: the lease runs out, the next worker logs the attempt as
abandoned and sends again. Every duplicate must be one of those.
"""

import asyncio
import random
import time
from pathlib import Path

from aiohttp import web

from chaos import harness
from chaos.report import Report
from chaos.workers import WorkerProcess
from deliverer.dev.receiver import Receiver

# A lease short enough that killed workers' deliveries come back within seconds, and a
# timeout long enough that a sink slowed by a busy machine never times out: a receiver
# that answers after the timeout gets the retry too, which is not what this scenario tests.
WORKER_ENV = {"DELIVERER_HTTP_TIMEOUT": "10", "DELIVERER_LEASE_SECONDS": "15", "DELIVERER_POLL_INTERVAL": "0.5",
              "DELIVERER_MAX_IN_FLIGHT": "50", "DELIVERER_BATCH_SIZE": "50", "DELIVERER_LOG_LEVEL": "warning",
              # Endpoint limits are the cluster's: a killed worker's requests hold their slots until its
              # leases run out (15 s here). At a kill every 2 s the default 50 per endpoint would be all
              # held by the dead, and the scenario would measure that instead of what crashes lose.
              "DELIVERER_ENDPOINT_MAX_IN_FLIGHT": "1000"}


async def run(dsn: str, workdir: Path, *, events: int = 20_000, endpoints: int = 3, workers: int = 3,
              kill_every: float | None = 2.0, kills_at: tuple[float, ...] = (), seed: int | None = None,
              timeout: float = 420) -> Report:
    """Deliver ``events`` to each of ``endpoints`` while killing a random worker every ``kill_every`` seconds,
    or, when ``kills_at`` is given, each time that fraction of the deliveries has arrived."""
    started = time.monotonic()
    rng = random.Random(seed)
    report = Report("1 worker crashes (SIGKILL)", fault_kind="SIGKILL")
    sink = await Receiver(keep_content=False).start()

    async def in_flight_for_a_moment(request: web.Request, n: int) -> web.StreamResponse:
        # A few milliseconds in flight per request, where a kill can land between send and record:
        # the receiver's behaviour under test, not a wait.
        await asyncio.sleep(rng.random() * 0.02)
        return web.Response(text="OK")

    paths = [f"/crash/{i}" for i in range(endpoints)]
    for path in paths:
        sink.behave(path, in_flight_for_a_moment)
        harness.add_endpoint(dsn, sink.url(path), "org_crash")
    slots = {i: WorkerProcess(dsn, f"crash-w{i}.1", workdir, **WORKER_ENV) for i in range(workers)}
    killed: set[str] = set()
    published: list[str] = []
    exit_codes: list[int] = []
    try:
        for proc in slots.values():
            await proc.start()
        producer = asyncio.create_task(harness.publish(dsn, events, "org_crash", batch=500, pause=0.05))
        expected_count = events * endpoints
        thresholds = [int(f * expected_count) for f in kills_at]
        deadline = time.monotonic() + timeout

        def all_arrived() -> bool:
            return producer.done() and len(sink.delivered()) >= expected_count

        while not all_arrived():
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"only {len(sink.delivered())} of {expected_count} arrived"
            if thresholds:
                threshold = thresholds.pop(0)

                def reached(threshold: int = threshold) -> bool:
                    return len(sink.answered()) >= threshold or all_arrived()
                await sink.wait_until(reached, f"{threshold} answered requests, the next kill's moment",
                                      timeout=remaining)
                if all_arrived():
                    break
            elif kill_every is not None:
                await asyncio.sleep(kill_every)  # the kill rate is the fault being injected, not a wait for anything
                if all_arrived():
                    break
            else:
                await sink.wait_until(all_arrived, f"all {expected_count} deliveries", timeout=remaining)
                break
            slot = rng.randrange(workers)
            victim = slots[slot]
            victim.kill()
            await victim.wait()
            killed.add(victim.name)
            report.faults += 1
            generation = int(victim.name.rsplit(".", 1)[1]) + 1
            slots[slot] = WorkerProcess(dsn, f"crash-w{slot}.{generation}", workdir, **WORKER_ENV)
            await slots[slot].start()
        published = await producer
        await harness.until_drained(dsn, timeout=max(30.0, deadline - time.monotonic()))
    finally:
        for proc in slots.values():
            try:
                exit_codes.append(await proc.stop(timeout=30))
            except TimeoutError:
                proc.kill()
                exit_codes.append(-9)
        await sink.stop()
    report.published = len(published)
    report.expected = {(event_id, path) for event_id in published for path in paths}
    report.delivered = sink.delivered()
    report.check(exit_codes == [0] * workers, f"workers exited with {exit_codes} on SIGTERM")
    report.notes.append(f"{len(killed)} worker incarnations killed, e.g. {', '.join(sorted(killed)[:4])}")
    return harness.finish(report, dsn, sink.answered(), killed, started)
