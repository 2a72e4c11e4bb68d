"""Health probes and metrics as Kubernetes and Prometheus see them."""

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
import pytest

import outbox
from deliverer.ops import probes
from tests.conftest import Receiver, add_endpoint, webhook_test
from tests.processes import WorkerProcess


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
        for _ in range(200):  # the probes listen before the worker first tries the database
            if "database unavailable; reconnecting" in worker.log():
                break
            await asyncio.sleep(0.05)
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


def _environ(dsn: str, **env: str) -> dict[str, str]:
    """The environment of an operator's shell: none of the test session's DELIVERER_ settings (it sets
    DELIVERER_METRICS_PORT=0), so the defaults are the command's own."""
    kept = {k: v for k, v in os.environ.items()
            if not k.startswith("DELIVERER_") or k == "DELIVERER_SECRET_KEYS"}
    return kept | {"DATABASE_URL": dsn, "DELIVERER_LOG_FORMAT": "json"} | env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _in_use(port: int) -> bool:
    """Whether a listener holds the port; SO_REUSEADDR as the servers bind, so closed connections
    still waiting out TIME_WAIT do not count."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return True
    return False


@pytest.mark.parametrize(("command", "setting", "flag"), [
    ("run", "DELIVERER_METRICS_PORT", "--metrics-port"),
    ("api", "DELIVERER_METRICS_PORT", "--metrics-port"),
    ("api", "DELIVERER_API_PORT", "--port"),
])
def test_a_taken_port_is_one_line_naming_the_setting(dsn: str, command: str, setting: str, flag: str) -> None:
    """A port another process holds stops the command at once: status 2 and one line on stderr that names
    the port and the setting that moves it, no traceback."""
    with socket.socket() as held:
        held.bind(("0.0.0.0", 0))
        held.listen()
        port = held.getsockname()[1]
        others = {"DELIVERER_API_PORT": str(_free_port()), "DELIVERER_METRICS_PORT": "0"}  # free ones
        result = subprocess.run([sys.executable, "-m", "deliverer", command],
                                env=_environ(dsn, **others | {setting: str(port)}),
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr == f"deliverer: error: port {port} is in use: set {setting} (or {flag}) to a free port\n"


def test_run_and_api_side_by_side_with_their_default_ports(dsn: str, tmp_path: Path) -> None:
    """`deliverer run` and `deliverer api` on one host, DELIVERER_METRICS_PORT unset: each serves its probes
    on its own default port, outside the exporters' 9100-9999, and both are live and ready. The API's own
    port is a free one: 8080 is not what this is about, and often taken on a developer's machine."""
    busy = [p for p in (probes.RUN_PORT, probes.API_PORT) if _in_use(p)]
    if busy:
        pytest.skip(f"the default probe port(s) {busy} are in use on this machine by something else")
    env = _environ(dsn, DELIVERER_API_PORT=str(_free_port()))
    logs = {name: (tmp_path / f"{name}.log").open("w+") for name in ("run", "api")}
    started = {name: subprocess.Popen([sys.executable, "-m", "deliverer", name], env=env, stdout=log,
                                      stderr=subprocess.STDOUT) for name, log in logs.items()}
    try:
        for port in (probes.RUN_PORT, probes.API_PORT):
            for _ in range(600):
                assert all(p.poll() is None for p in started.values()), "a process died"
                if _answers(port, "/livez") and _answers(port, "/readyz"):
                    break
                time.sleep(0.05)
            assert _answers(port, "/livez") and _answers(port, "/readyz"), port
    finally:
        for process in started.values():
            process.terminate()
        codes = {name: process.wait(30) for name, process in started.items()}
        output = {name: (log.seek(0), log.read())[1] for name, log in logs.items()}
        for log in logs.values():
            log.close()
    assert codes == {"run": 0, "api": 0}, output
    assert '"probes listening"' in output["run"] and f'"port": {probes.RUN_PORT}' in output["run"]
    assert "Traceback" not in output["run"] + output["api"]


def _answers(port: int, path: str) -> bool:
    try:
        return get(port, path)[0] == 200
    except OSError:
        return False
