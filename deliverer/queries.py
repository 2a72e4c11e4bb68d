"""The deliverer's SQL, loaded once from queries.sql."""

from outbox import sqlfile

QUERIES = sqlfile.load("deliverer", "queries.sql")
