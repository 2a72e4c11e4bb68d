"""Worker, API and CLI through a real PgBouncer in transaction pooling mode.

Two server connections serve every client, so consecutive transactions of one
client run on different server sessions and each session is shared by several
clients: anything that relied on session state (server-side prepared statements,
LISTEN, session advisory locks) shows up as errors or lost wake-ups here.
"""

import asyncio
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import psycopg
import pytest
from aiohttp import web
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import outbox
from deliverer.api.app import create_app
from deliverer.registry import apikeys
from tests.support import Receiver, add_endpoint, aeventually, count, eventually, settings_for, webhook_test
from tests.support.processes import WorkerProcess


def pgbouncer_binary() -> str | None:
    return shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/local/sbin")


pytestmark = pytest.mark.skipif(pgbouncer_binary() is None,
                                reason="pgbouncer is not installed (Debian package pgbouncer; .ci/run installs it)")

SERVER_CONNECTIONS = 2
# What docs/operations.md tells operators to set behind a transaction pooler.
POOLED = {"DELIVERER_PREPARED_STATEMENTS": "0"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@pytest.fixture
def bouncer(dsn: str) -> Iterator[str]:
    """A pgbouncer (transaction pooling, two server connections) in front of this test's database; its URL."""
    params = conninfo_to_dict(dsn)
    server = " ".join(f"{key}={_quote(str(params[key]))}" for key in ("host", "port", "dbname", "user", "password")
                      if params.get(key))
    user = str(params.get("user") or pwd.getpwuid(os.getuid()).pw_name)
    workdir = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
    (workdir / "users.txt").write_text(f'"{user}" ""\n')
    port = _free_port()
    lines = [
        "[databases]", f"{params['dbname']} = {server}",
        "[pgbouncer]", "listen_addr = 127.0.0.1", f"listen_port = {port}", "unix_socket_dir =",
        "auth_type = trust", f"auth_file = {workdir / 'users.txt'}",
        "pool_mode = transaction", f"default_pool_size = {SERVER_CONNECTIONS}", "reserve_pool_size = 0",
        "max_client_conn = 200",
    ]
    if os.geteuid() == 0:
        lines.append("user = nobody")  # pgbouncer refuses to run as root; it drops to this user after start
    (workdir / "pgbouncer.ini").write_text("\n".join(lines) + "\n")
    log = (workdir / "pgbouncer.log").open("wb")
    proc = subprocess.Popen([str(pgbouncer_binary()), str(workdir / "pgbouncer.ini")],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    direct = {k: v for k, v in params.items() if k not in ("host", "hostaddr", "port", "password")}
    url = make_conninfo("", **direct, host="127.0.0.1", port=str(port))

    def answers() -> bool:
        assert proc.poll() is None, f"pgbouncer exited:\n{(workdir / 'pgbouncer.log').read_text()}"
        psycopg.connect(url, connect_timeout=2).close()
        return True

    try:
        eventually(answers, lambda: f"pgbouncer to answer:\n{(workdir / 'pgbouncer.log').read_text()}",
                   timeout=15, interval=0.1, ignoring=(psycopg.OperationalError,))
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


def problems_in(log: str) -> list[str]:
    """The warning and error lines of a worker's JSON log."""
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    return [json.dumps(line) for line in lines if line.get("level") in ("warning", "error", "critical")]


async def test_worker_and_api_deliver_through_a_transaction_pooler(
        dsn: str, db: psycopg.Connection, bouncer: str, receiver: Receiver, tmp_path: Path) -> None:
    """Events published through PgBouncer all reach the receiver once, the API answers, and nothing errs.

    The worker's DATABASE_URL goes through PgBouncer and its LISTEN connection goes
    direct; with a one-minute poll interval the events arrive only because the
    notifications do.
    """
    add_endpoint(db, receiver, "/hook")
    key = apikeys.create(db, "org_a").key
    worker = WorkerProcess(bouncer, "pooled", tmp_path, DELIVERER_LISTEN_DATABASE_URL=dsn,
                           DELIVERER_POLL_INTERVAL="60", **POOLED)
    runner = web.AppRunner(create_app(settings_for(bouncer, prepared_statements=False)), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    api = f"http://127.0.0.1:{runner.addresses[0][1]}"
    published: list[str] = []

    async def publish(producer: int) -> None:
        # Producers behind a transaction pooler need server-side prepared statements off too.
        async with await psycopg.AsyncConnection.connect(bouncer, prepare_threshold=None) as conn:
            for _ in range(10):
                published.append(await outbox.apublish(conn, "webhook.test", webhook_test(), org_id="org_a"))
                await conn.commit()
                await asyncio.sleep(0.02)  # the producers' pace: commits interleave with the API's and the worker's

    async def use_api(http: aiohttp.ClientSession) -> list[int]:
        statuses = []
        for path in ["/v1/webhooks", "/v1/events?limit=100"] * 6:
            async with http.get(api + path, headers={"Authorization": f"Bearer {key}"}) as response:
                statuses.append(response.status)
        return statuses

    await worker.start()
    try:
        await worker.wait_started()
        async with aiohttp.ClientSession() as http:
            *_, statuses = await asyncio.gather(*(publish(p) for p in range(3)), use_api(http))
            assert statuses == [200] * 12
            await receiver.wait_for(len(published), timeout=30)
            async with http.post(api + "/v1/webhooks/test", json={"webhook_url": receiver.url("/hook")},
                                 headers={"Authorization": f"Bearer {key}"}) as response:
                tested = await response.json()
                assert response.status == 200 and tested["delivered"] is True, tested
        await aeventually(lambda: count(db, "delivery_queue") == 0, "every delivery to leave the queue")
    finally:
        stopped = await worker.stop()
        await runner.cleanup()
    assert stopped == 0
    assert len(published) == 30
    assert sorted(receiver.event_ids("/hook")) == sorted([*published, tested["event_id"]])
    assert all(r.signature_ok for r in receiver.requests)
    outcomes = db.execute("SELECT outcome, count(*) FROM delivery_log WHERE kind = 'attempt_finished' "
                          "GROUP BY outcome").fetchall()
    assert outcomes == [("succeeded", 31)]
    assert count(db, "delivery_queue") == 0
    assert problems_in(worker.log()) == []


def deliverer(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items()
               if (not k.startswith("DELIVERER_") or k == "DELIVERER_SECRET_KEYS") and k != "DATABASE_URL"}
    return subprocess.run([sys.executable, "-m", "deliverer", *args], env=environ | POOLED | {"DATABASE_URL": url},
                          capture_output=True, text=True, timeout=60)


def test_cli_through_a_transaction_pooler(bouncer: str, db: psycopg.Connection) -> None:
    """migrate, reseal (one statement run per endpoint) and listings work through PgBouncer, again and again."""
    for n in range(8):
        result = deliverer(bouncer, "endpoints", "add", "--org", "org_a", "--url", f"https://example.com/{n}")
        assert result.returncode == 0, result.stderr
    for args in (["migrate"], ["migrate"], ["reseal"], ["reseal"], ["reseal"], ["endpoints", "list", "--json"],
                 ["deliveries", "--json"], ["logs", "--json"]):
        result = deliverer(bouncer, *args)
        assert result.returncode == 0, f"deliverer {' '.join(args)}: {result.stderr}"
    assert len(json.loads(result.stdout)) == 0  # no attempts yet
    assert count(db, "webhook_endpoint") == 8
