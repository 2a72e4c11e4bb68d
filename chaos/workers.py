"""Real ``python -m deliverer run`` processes, started, signalled and killed from the outside."""

import asyncio
import os
import signal
import sys
from pathlib import Path

from deliverer.dev.waiting import aeventually


class WorkerProcess:
    """A `python -m deliverer run` subprocess whose log goes to a file; its worker id is ``name``."""

    def __init__(self, dsn: str, name: str, log_dir: Path, **env: str) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        # Port 0 for the probe server: many workers share this machine.
        self.env = {**os.environ, "DATABASE_URL": dsn, "DELIVERER_ALLOW_INSECURE_URLS": "1",
                    "DELIVERER_WORKER_ID": name, "DELIVERER_LOG_FORMAT": "json", "DELIVERER_METRICS_PORT": "0", **env}
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "deliverer", "run", env=self.env,
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def logged(self, message: str) -> int:
        """How many log lines carry this message."""
        return self.log().count(f'"event": "{message}"')

    async def wait_logged(self, message: str, times: int = 1, timeout: float = 60) -> None:
        def logged_enough() -> bool:
            if self.logged(message) >= times:
                return True
            assert self.running, f"{self.name} exited while waiting for {message!r}:\n{self.log()[-3000:]}"
            return False
        await aeventually(logged_enough, lambda: f"{self.name} to log {message!r} {times} time(s); its log:\n"
                                                 f"{self.log()[-3000:]}", timeout=timeout)

    async def wait_started(self, timeout: float = 30) -> None:
        await self.wait_logged("worker started", timeout=timeout)

    def signal(self, sig: signal.Signals) -> None:
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(sig)

    async def wait(self, timeout: float = 60) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), timeout)

    async def stop(self, timeout: float = 30) -> int:
        self.signal(signal.SIGTERM)
        return await self.wait(timeout)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
