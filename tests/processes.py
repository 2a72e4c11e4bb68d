"""Running real `deliverer run` processes from tests."""

import asyncio
import os
import signal
import sys
import time
from pathlib import Path


class WorkerProcess:
    """A `python -m deliverer run` subprocess whose log goes to a file."""

    def __init__(self, dsn: str, name: str, log_dir: Path, **env: str) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.env = {**os.environ, "DATABASE_URL": dsn, "DELIVERER_ALLOW_INSECURE_URLS": "1",
                    "DELIVERER_WORKER_ID": name, "DELIVERER_LOG_FORMAT": "json", **env}
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "deliverer", "run", env=self.env,
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_started(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while '"worker started"' not in self.log():
            assert self.proc is not None and self.proc.returncode is None, f"{self.name} exited:\n{self.log()}"
            assert time.monotonic() < deadline, f"{self.name} did not start:\n{self.log()}"
            await asyncio.sleep(0.05)

    async def stop(self, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
