"""Real processes from tests: `deliverer run` workers (the fault suite's WorkerProcess) and one-shot commands."""

import os
import pty
import re
import subprocess
import sys

from chaos.workers import WorkerProcess

__all__ = ["WorkerProcess", "deliverer", "deliverer_in_terminal"]


def _operator_env(dsn: str | None, env: dict[str, str]) -> dict[str, str]:
    """No DELIVERER_* settings but the sealing keys, and the test's database."""
    environ = {k: v for k, v in os.environ.items()
               if (not k.startswith("DELIVERER_") or k == "DELIVERER_SECRET_KEYS") and k != "DATABASE_URL"}
    if dsn:
        environ["DATABASE_URL"] = dsn
    return environ | env


def deliverer(dsn: str | None, *args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m deliverer *args`` as an operator would, its output into pipes (``stdin`` typed in)."""
    return subprocess.run([sys.executable, "-m", "deliverer", *args], env=_operator_env(dsn, env),
                          capture_output=True, text=True, timeout=60, input=stdin)


_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def deliverer_in_terminal(dsn: str | None, *args: str, **env: str) -> tuple[int, str, str]:
    """Run it as a person at a 120-column terminal does: stdout and stderr on one pseudo-terminal.
    Returns the exit status, what the terminal got, and that text with the escape sequences removed."""
    controller, terminal = pty.openpty()
    command = subprocess.Popen([sys.executable, "-m", "deliverer", *args], stdin=terminal, stdout=terminal,
                               stderr=terminal, env=_operator_env(dsn, {"COLUMNS": "120", "TERM": "xterm"} | env))
    os.close(terminal)
    received = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the command closed the terminal's last open end
            break
        if not chunk:
            break
        received += chunk
    os.close(controller)
    raw = received.decode(errors="replace")
    return command.wait(timeout=60), raw, _ESCAPES.sub("", raw)
