"""Health probes and metrics of a real `deliverer run` process, as Kubernetes and Prometheus see them."""

import asyncio
import json
import re
from pathlib import Path

import psycopg

import outbox
from tests.support import Receiver, add_endpoint, webhook_test
from tests.support.probes import http_get
from tests.support.processes import WorkerProcess


async def probe_port(worker: WorkerProcess, timeout: float = 30) -> int:
    for _ in range(int(timeout * 20)):
        for line in worker.log().splitlines():
            if '"probes listening"' in line:
                return int(json.loads(line)["port"])
        await asyncio.sleep(0.05)
    raise AssertionError(f"no probe port logged:\n{worker.log()}")


async def test_a_worker_without_its_database_is_alive_but_not_ready(tmp_path: Path) -> None:
    """With the database unreachable the worker keeps running: live, not ready."""
    worker = WorkerProcess("postgresql://nobody@127.0.0.1:1/nothing", "w", tmp_path)
    await worker.start()
    try:
        port = await probe_port(worker)
        assert http_get(port, "/livez")[0] == 200
        assert http_get(port, "/readyz")[0] == 503
        assert "database unavailable; reconnecting" in worker.log()
    finally:
        assert await worker.stop() == 0


async def test_a_working_worker_is_ready_and_exports_its_metrics(
        dsn: str, db: psycopg.Connection, receiver: Receiver, tmp_path: Path) -> None:
    """After delivering, the worker is ready and /metrics shows the attempt and the backlog gauges."""
    add_endpoint(db, receiver, "/hook")
    worker = WorkerProcess(dsn, "w", tmp_path)
    await worker.start()
    try:
        port = await probe_port(worker)
        with psycopg.connect(dsn) as conn:
            outbox.publish(conn, "webhook.test", webhook_test(), org_id="org_a")
            conn.commit()
        await receiver.wait_for(1)
        for _ in range(200):
            _, metrics = http_get(port, "/metrics")
            if re.search(r'^deliverer_attempts_total\{outcome="success"\} 1\.0$', metrics, re.MULTILINE):
                break
            await asyncio.sleep(0.05)
        assert http_get(port, "/readyz")[0] == 200
        assert re.search(r'^deliverer_attempts_total\{outcome="success"\} 1\.0$', metrics, re.MULTILINE), metrics
        assert "deliverer_end_to_end_latency_seconds_count 1.0" in metrics
        assert "deliverer_deliveries_due " in metrics and "deliverer_heartbeat_timestamp_seconds " in metrics
        assert "whsec_" not in metrics and "org_a" not in metrics
    finally:
        assert await worker.stop() == 0
