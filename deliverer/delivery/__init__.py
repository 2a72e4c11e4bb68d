"""The hot path: claim due deliveries, attempt each (sign and POST), record the outcomes.

One module a step: ``claim`` leases work, ``attempt`` sends one delivery and decides
what happens next, ``record`` writes outcomes back in fenced batches, ``health``
tracks failing endpoints, ``limits`` paces each endpoint, ``worker`` runs the loops.
``send`` is the HTTP client, ``sign`` the signatures, ``schedule`` the retry delays.
May import: ``deliverer.registry``, ``deliverer.storage``, ``deliverer.ops``,
``deliverer.security``, ``deliverer.settings``, ``outbox``.
"""
