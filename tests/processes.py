"""Running real `deliverer run` processes from tests (the fault suite's WorkerProcess)."""

from chaos.workers import WorkerProcess

__all__ = ["WorkerProcess"]
