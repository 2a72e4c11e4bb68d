"""Applying schema.sql, the single source of truth for the database layout."""

from datetime import datetime
from importlib import resources

import psycopg

from deliverer.storage import partitions
from deliverer.storage.queries import QUERIES


def schema_sql() -> str:
    return resources.files(__package__).joinpath("schema.sql").read_text(encoding="utf-8")


def migrate(conn: psycopg.Connection, now: datetime | None = None) -> list[partitions.Decision]:
    """Apply the schema and create the partitions around ``now``, in one transaction.

    Safe to run again and from many pods at once. Returns what partition
    maintenance did (see deliverer.partitions.ensure).
    """
    with conn.transaction():
        conn.execute(QUERIES["lock_migrations"])
        conn.execute(schema_sql())
        return partitions.ensure(conn, now)
