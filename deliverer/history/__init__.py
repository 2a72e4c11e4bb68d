"""The log side: what the append-only delivery log says, and asking it for more.

``projection`` rebuilds the queue from the log, ``logs`` reads delivery logs back,
``replay`` asks for deliveries again, ``ping`` sends a test event through the
attempt step. May import: ``deliverer.delivery`` (the attempt step only, for test
events) and everything below it.
"""
