"""The fault suite: proof that no event is lost and duplicates stay within the design.

Every scenario runs real parts: a real PostgreSQL, real ``python -m deliverer
run`` processes and real receivers on loopback. Each one takes a migrated,
empty database (``dsn``), a working directory for logs and a size, and returns
a :class:`chaos.report.Report`: what was published, what was expected, what
arrived, and every check that failed. ``make chaos`` (``python -m chaos``) runs
them all at full size and prints the summary table; ``tests/system/test_chaos_*.py``
run each at a reduced size and compare the sets exactly.

Scenarios, one module each: ``worker_crashes``, ``database_outage``,
``receiver_matrix``, ``graceful_shutdown``, ``concurrent_producers``,
``schedule_property``; ``integrity`` checks the log after each of them.
"""
