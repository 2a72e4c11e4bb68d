"""The webhook deliverer: claims due deliveries, signs and POSTs them, and
records every attempt in the append-only delivery log."""

__version__ = "0.1.0"
