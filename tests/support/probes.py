"""Reading health probes and metrics the way Kubernetes and Prometheus do: plain HTTP GETs on loopback."""

import urllib.error
import urllib.request


def http_get(port: int, path: str) -> tuple[int, str]:
    """GET a path of a local probe server: (status, body), error statuses included."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
