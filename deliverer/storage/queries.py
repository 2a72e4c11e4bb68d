"""The storage package's SQL, loaded once from queries.sql."""

from outbox import sqlfile

QUERIES = sqlfile.load(__package__, "queries.sql")
