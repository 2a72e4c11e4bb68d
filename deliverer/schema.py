"""Applying schema.sql, the single source of truth for the database layout."""

from importlib import resources

import psycopg

from deliverer.queries import QUERIES


def schema_sql() -> str:
    return resources.files("deliverer").joinpath("schema.sql").read_text(encoding="utf-8")


def migrate(conn: psycopg.Connection) -> None:
    """Apply the schema in one transaction; safe to run again and from many pods at once."""
    with conn.transaction():
        conn.execute(QUERIES["lock_migrations"])
        conn.execute(schema_sql())
