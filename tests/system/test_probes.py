"""Health probes and metrics of a real `deliverer run` process, as Kubernetes and Prometheus see them."""

import json
import re
from pathlib import Path

import psycopg

import outbox
from tests.support import Receiver, add_endpoint, aeventually, webhook_test
from tests.support.probes import http_get
from tests.support.processes import WorkerProcess

SUCCESS = re.compile(r'^deliverer_attempts_total\{outcome="success"\} 1\.0$', re.MULTILINE)


async def probe_port(worker: WorkerProcess, timeout: float = 30) -> int:
    def logged_port() -> int | None:
        for line in worker.log().splitlines():
            if '"probes listening"' in line:
                return int(json.loads(line)["port"])
        return None
    return await aeventually(logged_port, lambda: f"a probe port in the log of {worker.name}:\n{worker.log()}",
                             timeout=timeout)


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

        def counted() -> str | None:
            metrics = http_get(port, "/metrics")[1]
            return metrics if SUCCESS.search(metrics) else None
        metrics = await aeventually(counted, lambda: f"the attempt in /metrics:\n{http_get(port, '/metrics')[1]}")
        assert http_get(port, "/readyz")[0] == 200
        assert SUCCESS.search(metrics), metrics
        assert "deliverer_end_to_end_latency_seconds_count 1.0" in metrics
        assert "deliverer_deliveries_due " in metrics and "deliverer_heartbeat_timestamp_seconds " in metrics
        assert "whsec_" not in metrics and "org_a" not in metrics
    finally:
        assert await worker.stop() == 0
