"""Real processes from tests: `deliverer run` workers (the fault suite's WorkerProcess) and one-shot commands."""

import os
import subprocess
import sys

from chaos.workers import WorkerProcess

__all__ = ["WorkerProcess", "deliverer"]


def deliverer(dsn: str | None, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m deliverer *args`` as an operator would: no DELIVERER_* settings but the sealing keys."""
    environ = {k: v for k, v in os.environ.items()
               if (not k.startswith("DELIVERER_") or k == "DELIVERER_SECRET_KEYS") and k != "DATABASE_URL"}
    if dsn:
        environ["DATABASE_URL"] = dsn
    return subprocess.run([sys.executable, "-m", "deliverer", *args], env=environ | env,
                          capture_output=True, text=True, timeout=60)
