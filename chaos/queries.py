"""The suite's SQL, loaded once from queries.sql."""

from outbox import sqlfile

QUERIES = sqlfile.load("chaos", "queries.sql")
