"""Health probes and metrics of a real `deliverer run` process, as Kubernetes and Prometheus see them."""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

import outbox
from deliverer.ops import probes
from tests.support import Receiver, add_endpoint, aeventually, eventually, webhook_test
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
        # The probes listen before the worker first tries the database.
        await aeventually(lambda: "database unavailable; reconnecting" in worker.log(), "the first reconnect")
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
            def up(port: int = port) -> bool:
                assert all(p.poll() is None for p in started.values()), "a process died"
                return _answers(port, "/livez") and _answers(port, "/readyz")
            eventually(up, f"live and ready on port {port}", timeout=30)
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
        return http_get(port, path)[0] == 200
    except OSError:
        return False
