"""Running it in production: Prometheus metrics, tracing, the probe server, logging setup.

Imported by every layer above; imports nothing from the rest of ``deliverer``.
"""
