"""Opening database connections: the one place the worker, the API and the CLI get their options.

Every connection but the worker's LISTEN connection works through a PgBouncer in
transaction pooling mode, where each transaction may run on a different server
session. Nothing here keeps session state from one transaction to the next: every
statement runs in autocommit or inside an explicit transaction, advisory locks are
transaction-scoped (``pg_advisory_xact_lock``), and there is no SET, temporary
table or held cursor.

Two things are session state all the same:

- Server-side prepared statements, which psycopg creates by itself once a query
  has run ``PREPARE_THRESHOLD`` times on a connection. They live in the server
  session; behind a transaction pooler older than PgBouncer 1.21 (or one with
  ``max_prepared_statements = 0``) the next transaction may find the statement
  missing ("prepared statement "_pg3_0" does not exist") or another client's of the
  same name ("... already exists"). ``DELIVERER_PREPARED_STATEMENTS=0`` turns them
  off; every statement is then parsed and planned each time it runs.
- LISTEN: notifications go to the server session that listens, which a
  transaction pooler hands to other clients between transactions. The worker's
  LISTEN connection therefore uses ``DELIVERER_LISTEN_DATABASE_URL`` (a direct or
  session-pooled connection), which defaults to ``DATABASE_URL``.
"""

from typing import Any

import psycopg

from deliverer.settings import Settings

CONNECT_TIMEOUT = 5  # seconds; a database that does not answer must not hang a reconnect
PREPARE_THRESHOLD = 5  # psycopg's default: prepare a query on the server from its 6th run on a connection


def options(settings: Settings, application_name: str) -> dict[str, Any]:
    """Keyword arguments for ``psycopg.connect``, ``AsyncConnection.connect`` and a pool's ``kwargs``."""
    return {
        "autocommit": True,
        "application_name": application_name,
        "connect_timeout": CONNECT_TIMEOUT,
        "prepare_threshold": PREPARE_THRESHOLD if settings.prepared_statements else None,
    }


def connect(settings: Settings, application_name: str) -> psycopg.Connection:
    """An autocommit connection to DATABASE_URL."""
    return psycopg.connect(settings.database_url, **options(settings, application_name))


async def aconnect(settings: Settings, application_name: str, *, listen: bool = False) -> psycopg.AsyncConnection[Any]:
    """An autocommit connection to DATABASE_URL, or with ``listen`` to the URL for LISTEN."""
    url = settings.listen_url if listen else settings.database_url
    return await psycopg.AsyncConnection.connect(url, **options(settings, application_name))
