"""Unit tests: no database and no subprocess; loopback sockets are fine. Runs in seconds: `pytest tests/unit`."""
