"""The webhook deliverer: claims due deliveries, signs and POSTs them, and
records every attempt in the append-only delivery log."""

from importlib.metadata import version

__version__ = version("docextract-webhooks")  # pyproject.toml's [project] version, the one place it is written
