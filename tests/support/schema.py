"""Released versions of schema.sql, frozen to test upgrades from them, and what the upgrades must produce."""

from pathlib import Path

import psycopg

HERE = Path(__file__).resolve().parent
SCHEMA_BEFORE_ENUMS = HERE / "schema_before_enums.sql"
SCHEMA_BEFORE_PARTITIONING = HERE / "schema_before_partitioning.sql"
ENUM_COLUMNS = {("kind", "delivery_fact_kind"), ("outcome", "delivery_outcome")}


def log_columns(db: psycopg.Connection) -> set[tuple[str, str]]:
    """(column, type) of kind and outcome on delivery_log and on every partition of it."""
    return set(db.execute("SELECT DISTINCT a.attname, format_type(a.atttypid, a.atttypmod) "
                          "FROM pg_partition_tree('delivery_log') t JOIN pg_attribute a ON a.attrelid = t.relid "
                          "WHERE a.attname IN ('kind', 'outcome')").fetchall())


def log_checks(db: psycopg.Connection) -> list[tuple[str, str]]:
    """CHECK constraints on delivery_log or any partition of it."""
    return db.execute("SELECT c.conrelid::regclass::text, c.conname FROM pg_constraint c "
                      "JOIN pg_partition_tree('delivery_log') t ON t.relid = c.conrelid "
                      "WHERE c.contype = 'c'").fetchall()
