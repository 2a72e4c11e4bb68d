"""Hostile input: the API, run as a real process, fuzzed from its OpenAPI document by schemathesis.

Publish fuzzed with hypothesis is in tests/integration/test_fuzz.py.
"""

import asyncio
import os
import shutil
import socket
import sys
from pathlib import Path

import psycopg
import pytest

from deliverer.registry import apikeys
from tests.support import aeventually


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(shutil.which("schemathesis", path=str(Path(sys.executable).parent)) is None,
                    reason="schemathesis is not installed (pip install -e '.[dev]')")
async def test_api_survives_schemathesis(dsn: str, db: psycopg.Connection, tmp_path: Path) -> None:
    """Generated requests from the OpenAPI document never get a 5xx, and responses match the document."""
    key = apikeys.create(db, "org_fuzz").key
    port = free_port()
    log = (tmp_path / "api.log").open("wb")
    # Development mode: generated host names are not looked up in DNS (this machine's resolver is not ours
    # to flood); URL rules for production are covered by tests/unit/test_endpoints.py.
    env = {**os.environ, "DATABASE_URL": dsn, "DELIVERER_API_PORT": str(port), "DELIVERER_LOG_FORMAT": "json",
           "DELIVERER_ALLOW_INSECURE_URLS": "1"}
    api = await asyncio.create_subprocess_exec(sys.executable, "-m", "deliverer", "api", env=env,
                                               stdout=log, stderr=log)
    try:
        def listening() -> bool:
            assert api.returncode is None, f"the API exited:\n{(tmp_path / 'api.log').read_text()}"
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return True
        await aeventually(listening, f"the API to listen on port {port}", ignoring=(OSError,))
        # Positive-data acceptance is left out: some rules (https only, until after
        # since) are stricter than JSON Schema can say. The test-event operation is
        # left out because it would send requests to the generated URLs.
        fuzz = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "schemathesis"), "run", f"http://127.0.0.1:{port}/v1/openapi.json",
            "-H", f"Authorization: Bearer {key}", "--checks", "all", "--exclude-checks", "positive_data_acceptance",
            "--exclude-operation-id", "sendTestEvent", "--max-examples", "25", "--seed", "20261127",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        output = (await asyncio.wait_for(fuzz.communicate(), 300))[0].decode()
    finally:
        api.terminate()
        await api.wait()
        log.close()
    assert fuzz.returncode == 0, output[-6000:]
    assert "Traceback" not in (tmp_path / "api.log").read_text()
