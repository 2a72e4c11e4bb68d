"""Storage: connections, the schema (schema.sql) and its daily partitions and retention.

Everything that shapes the database lives here; the SQL of each other package lives
beside that package. May import: ``deliverer.ops``, ``deliverer.settings``, ``outbox``.
"""
