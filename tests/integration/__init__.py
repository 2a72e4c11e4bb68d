"""Integration tests: a real PostgreSQL (a fresh database per test), everything else in-process."""
