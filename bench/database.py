"""Databases for the benchmark: one fresh database per scenario on the given server.

Each database is created with the schema (``deliverer migrate``'s code), its
endpoints pointing at the sink, and dropped ``WITH (FORCE)`` afterwards. A
drain needs N deliveries that appear at once while the deliverers are already
running, as after a burst or an outage. To get that without counting process
start-up, events are published normally (``outbox.publish_many``), then their
queue rows are moved to a staging table (``bench_staged``); ``release`` puts
them back and notifies the deliverers in one transaction.
"""

import bisect
import contextlib
import itertools
import random
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote, urlencode

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import outbox
from deliverer.delivery.worker import CHANNEL
from deliverer.registry import endpoints
from deliverer.storage import schema
from outbox import sqlfile
from outbox.publish import serialize

QUERIES = sqlfile.load("bench", "queries.sql")
ORGS = 10
"""Events are spread round-robin over this many orgs, each with one endpoint: one delivery per event."""

PAYLOAD: dict[str, Any] = {
    "id": "job_abc123", "org_id": "org_bench", "extractor_id": "ext_def456", "status": "completed",
    "extracted_data": {"invoice_number": "INV-2024-001", "total_amount": 1250.50, "invoice_date": "2024-11-15"},
    "confidence": {"invoice_number": 0.98, "total_amount": 0.95, "invoice_date": 0.99},
    "processing_time_ms": 4532, "cost_credits": 2, "metadata": {"customer_id": "cust_123", "source": "email"},
    "created_at": "2024-11-23T10:00:00Z", "completed_at": "2024-11-23T10:00:05Z",
}
"""The customer docs' job.completed example: what every benchmark event carries."""


def org(index: int) -> str:
    return f"org_bench_{index}"


def job_completed(index: int, orgs: int) -> outbox.Event:
    """The ``index``-th event, spread round-robin over ``orgs`` orgs (one endpoint each)."""
    return event_for(index, index % orgs)


def event_for(index: int, org_index: int) -> outbox.Event:
    org_id = org(org_index)
    return outbox.Event("job.completed", {**PAYLOAD, "id": f"job_{index}", "org_id": org_id}, org_id)


class Zipf:
    """Org (endpoint) indexes 0..n-1 with P(k) proportional to 1 / (k+1)^s: index 0 is the busiest.

    ``pick(i)`` is a function of ``i`` alone, so two runs (and several producer
    processes) send event i to the same endpoint.
    """

    def __init__(self, n: int, s: float) -> None:
        weights = [1 / (k + 1) ** s for k in range(n)]
        total = sum(weights)
        self.shares = [w / total for w in weights]
        self._cumulative = list(itertools.accumulate(self.shares))

    def pick(self, i: int) -> int:
        return min(bisect.bisect_left(self._cumulative, random.Random(i).random()), len(self.shares) - 1)


def body() -> str:
    return serialize("job.completed", {**PAYLOAD, "org_id": org(0)})


@dataclass
class Server:
    """A PostgreSQL server the benchmark may create and drop databases on."""

    url: str

    def admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.url, autocommit=True)

    def version(self) -> str:
        with self.admin() as conn:
            row = conn.execute("SHOW server_version").fetchone()
        assert row is not None
        return str(row[0])

    def create(self, label: str, *, template: str | None = None) -> str:
        """A new database (migrated, or a copy of ``template``); returns its connection string."""
        name = f"bench_{label}_{secrets.token_hex(3)}"
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            statement = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(dbname(template)))
        with self.admin() as conn:
            conn.execute(statement)
        dsn = make_conninfo(self.url, dbname=name)
        if template is None:
            with psycopg.connect(dsn, autocommit=True) as conn:
                schema.migrate(conn)
                conn.execute(QUERIES["create_staging"])
        return dsn

    def drop(self, dsn: str) -> None:
        with self.admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname(dsn))))

    @contextlib.contextmanager
    def database(self, label: str, *, template: str | None = None) -> Iterator[str]:
        dsn = self.create(label, template=template)
        try:
            yield dsn
        finally:
            self.drop(dsn)


def dbname(dsn: str) -> str:
    return str(conninfo_to_dict(dsn)["dbname"])


def url(dsn: str, **params: str) -> str:
    """``dsn`` as a postgresql:// URL (what asyncpg and Node's pg take), with ``params`` added to its query."""
    parts = {k: str(v) for k, v in conninfo_to_dict(dsn).items()}
    user = quote(parts.pop("user", ""), safe="") + (":" + quote(parts.pop("password"), safe="")
                                                     if "password" in parts else "")
    host, port, name = parts.pop("host", "localhost"), parts.pop("port", ""), parts.pop("dbname", "")
    if host.startswith("/"):  # a Unix socket directory goes in the query, after an empty host
        parts["host"], host = host, ""
    return (f"postgresql://{user}@{host}{':' + port if port else ''}/{quote(name, safe='')}?"
            + urlencode({**parts, **params}, quote_via=quote))


def add_endpoints(dsn: str, urls: Sequence[str], *, org_id: str | None = None, ordering: str = "none",
                  max_in_flight: int | None = None) -> list[str]:
    """One endpoint per URL: in org ``org_id`` if given, else the i-th URL in org ``org(i)``; ``max_in_flight``
    None is the deployment's default."""
    limits = endpoints.Limits(max_in_flight=max_in_flight)
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [endpoints.add(conn, org_id=org_id or org(i), url=url, allow_insecure=True, ordering=ordering,
                              limits=limits).id
                for i, url in enumerate(urls)]


def publish(dsn: str, count: int, orgs: int, *, chunk: int = 1000, keys: int | None = None) -> None:
    """Publish ``count`` events through the outbox, ``chunk`` per statement; with ``keys``, the i-th event
    has ordering key i modulo keys."""
    with psycopg.connect(dsn) as conn:
        for start in range(0, count, chunk):
            batch = [job_completed(i, orgs) for i in range(start, min(start + chunk, count))]
            if keys is not None:
                batch = [replace(e, ordering_key=f"key_{i % keys}") for i, e in enumerate(batch, start)]
            outbox.publish_many(conn, batch)
            conn.commit()


def stage(dsn: str, count: int, orgs: int, *, keys: int | None = None) -> None:
    """Publish ``count`` events and hold their deliveries back until :func:`release`."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(QUERIES["clear_staging"])
    publish(dsn, count, orgs, keys=keys)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(QUERIES["stage_due"])
        conn.execute(QUERIES["vacuum_queue"])
        conn.execute(QUERIES["vacuum_staging"])


def release(conn: psycopg.Connection[Any]) -> None:
    """Queue every staged delivery at once and wake the deliverers (one transaction)."""
    with conn.transaction():
        conn.execute(QUERIES["release_staged"])
        conn.execute(QUERIES["notify_deliverers"], {"channel": CHANNEL})


def fetch_one(conn: psycopg.Connection[Any], name: str, params: dict[str, Any] | None = None) -> Any:
    row = conn.execute(QUERIES[name], params or {}).fetchone()
    assert row is not None
    return row[0]
