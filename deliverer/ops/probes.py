"""Liveness, readiness and /metrics, served from a thread beside the event loop.

- ``/livez`` answers from the event loop's heartbeat, not from the database: a
  database outage makes every pod not ready, but must not make Kubernetes
  restart them all. The server runs on its own thread, so a blocked event loop
  shows up as a stale heartbeat (503) instead of as a probe that hangs.
- ``/readyz`` is the worker's own view: ready once a claim has succeeded, not
  ready while the database cannot be reached.
- ``/metrics`` is the Prometheus exposition of deliverer.metrics.
"""

import asyncio
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from deliverer.ops.metrics import METRICS

STALE_AFTER = 10.0  # seconds without a heartbeat before the process counts as stuck

# Default probe ports (DELIVERER_METRICS_PORT overrides them): one per process, so a worker and an
# API on one host do not collide, and outside 9100-9999, which Prometheus's port allocations give to
# exporters (node_exporter has 9100). The API itself listens on 8080.
RUN_PORT = 8091
API_PORT = 8092


class Heartbeat:
    """Ticks from inside the event loop; read from the probe thread."""

    def __init__(self) -> None:
        self.last = time.monotonic()

    async def run(self, interval: float = 1.0) -> None:
        while True:
            self.last = time.monotonic()
            METRICS.heartbeat.set(time.time())
            await asyncio.sleep(interval)

    def age(self) -> float:
        return time.monotonic() - self.last


def serve(port: int, *, heartbeat: Heartbeat, ready: Callable[[], bool],
          host: str = "0.0.0.0") -> ThreadingHTTPServer:
    """Start the probe server on a daemon thread; returns it so callers can shut it down.

    It listens on every interface by default because the kubelet and Prometheus
    reach the pod by its IP.
    """

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._reply(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
            elif self.path == "/livez":
                age = heartbeat.age()
                if age > STALE_AFTER:
                    self._reply(503, f"event loop stalled: no heartbeat for {age:.1f} s\n".encode())
                else:
                    self._reply(200, b"ok\n")
            elif self.path == "/readyz":
                if ready():
                    self._reply(200, b"ready\n")
                else:
                    self._reply(503, b"not ready: cannot claim work (database unreachable or not yet polled)\n")
            else:
                self._reply(404, b"not found: try /livez, /readyz or /metrics\n")

        def _reply(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            """Probe requests every few seconds are not worth a log line."""

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="probes", daemon=True).start()
    return server
