"""Health probes and metrics as Kubernetes and Prometheus see them."""

import asyncio
import json
import re
import urllib.error
import urllib.request
from pathlib import Path

import psycopg

import outbox
from deliverer.ops import probes
from tests.support import Receiver, add_endpoint, webhook_test
from tests.support.processes import WorkerProcess


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def probe_port(worker: WorkerProcess, timeout: float = 30) -> int:
    for _ in range(int(timeout * 20)):
        for line in worker.log().splitlines():
            if '"probes listening"' in line:
                return int(json.loads(line)["port"])
        await asyncio.sleep(0.05)
    raise AssertionError(f"no probe port logged:\n{worker.log()}")


def test_liveness_follows_the_heartbeat_not_readiness() -> None:
    """/livez fails only when the heartbeat is stale; /readyz follows the worker's readiness."""
    heartbeat = probes.Heartbeat()
    ready = {"value": False}
    server = probes.serve(0, heartbeat=heartbeat, ready=lambda: ready["value"], host="127.0.0.1")
    port = server.server_address[1]
    try:
        assert get(port, "/livez")[0] == 200
        assert get(port, "/readyz") == (503, "not ready: cannot claim work (database unreachable or not yet polled)\n")
        ready["value"] = True
        assert get(port, "/readyz")[0] == 200
        heartbeat.last -= probes.STALE_AFTER + 1
        status, body = get(port, "/livez")
        assert status == 503 and "event loop stalled" in body
        assert get(port, "/nope")[0] == 404
    finally:
        server.shutdown()


async def test_a_worker_without_its_database_is_alive_but_not_ready(tmp_path: Path) -> None:
    """With the database unreachable the worker keeps running: live, not ready."""
    worker = WorkerProcess("postgresql://nobody@127.0.0.1:1/nothing", "w", tmp_path)
    await worker.start()
    try:
        port = await probe_port(worker)
        assert get(port, "/livez")[0] == 200
        assert get(port, "/readyz")[0] == 503
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
            _, metrics = get(port, "/metrics")
            if re.search(r'^deliverer_attempts_total\{outcome="success"\} 1\.0$', metrics, re.MULTILINE):
                break
            await asyncio.sleep(0.05)
        assert get(port, "/readyz")[0] == 200
        assert re.search(r'^deliverer_attempts_total\{outcome="success"\} 1\.0$', metrics, re.MULTILINE), metrics
        assert "deliverer_end_to_end_latency_seconds_count 1.0" in metrics
        assert "deliverer_deliveries_due " in metrics and "deliverer_heartbeat_timestamp_seconds " in metrics
        assert "whsec_" not in metrics and "org_a" not in metrics
    finally:
        assert await worker.stop() == 0


def test_logged_tracebacks_carry_no_locals_or_secrets(capsys: object) -> None:
    """A logged exception shows no local variables and no secret, in JSON and in the console format."""
    import structlog

    from deliverer.ops import logsetup as logconfig

    for fmt in ("json", "console"):
        logconfig.configure("info", fmt)
        secret = "whsec_c2VjcmV0LXRoYXQtbXVzdC1ub3QtbGVhaw=="  # a local: tracebacks must not show it
        try:
            raise ValueError("boom")
        except ValueError:
            structlog.get_logger("test").exception("failed", authorization="Bearer sk_live_abc", note=f"key {secret}")
        err = capsys.readouterr().err  # type: ignore[attr-defined]
        assert "boom" in err and "whsec_" not in err and "sk_live_abc" not in err, err
