"""Fixtures for every layer: a real PostgreSQL, a fresh database per test, a real HTTP receiver, a fake clock.

The database fixtures are lazy: nothing connects until a test asks for ``dsn``,
``db`` or ``pg_server``, so tests/unit runs with no PostgreSQL at all (and its
own conftest refuses them). How the server is found is in tests/support/database.py.

Each test is marked with its layer from the directory it lives in, so
``pytest -m "not system"`` and ``pytest tests/unit`` select by layer.
"""

import logging
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest

from tests.support import FakeClock, Receiver
from tests.support import database as testdb

# Worker processes started by tests each serve probes; a free port each avoids clashes.
os.environ["DELIVERER_METRICS_PORT"] = "0"
# Endpoint secrets are sealed at rest; tests (and the workers they start) share one key.
os.environ.setdefault("DELIVERER_SECRET_KEYS", "5_ZsxSiPzlJuC4q_f8tTHYBU8pC76WdHhM3O-gS9F3g=")

TESTS = Path(__file__).resolve().parent
LAYERS = ("unit", "integration", "system")  # registered as markers in pyproject.toml


@pytest.hookimpl(tryfirst=True)  # before -m deselects anything
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with the layer its directory names; a test outside the three layers is an error."""
    for item in items:
        parts = item.path.resolve().relative_to(TESTS).parts
        layer = parts[0] if len(parts) > 1 else None
        if layer not in LAYERS:
            raise pytest.UsageError(f"{item.nodeid}: tests live in tests/unit, tests/integration or tests/system")
        item.add_marker(getattr(pytest.mark, layer))


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    """Puts the root logger back after each test.

    A command run in-process (``cli.main``) points the root logger at the test's
    captured stderr, which closes when the test ends; left there, every later
    record, down to the embedded server's own cleanup at exit, is a "Logging error".
    """
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    with testdb.server() as url:
        yield url


@pytest.fixture(scope="session")
def template_db(pg_server: str) -> Iterator[str]:
    with testdb.migrated_template(pg_server) as name:
        yield name


@pytest.fixture
def dsn(pg_server: str, template_db: str) -> Iterator[str]:
    """A fresh, migrated database for this test only."""
    with testdb.empty_database(pg_server, "outbox_test", template=template_db) as name:
        yield testdb.url_of(pg_server, name)


@pytest.fixture
def empty_dsn(pg_server: str) -> Iterator[str]:
    """A database with nothing in it yet, for migrate to create everything."""
    with testdb.empty_database(pg_server, "outbox_empty") as name:
        yield testdb.url_of(pg_server, name)


@pytest.fixture
def db(dsn: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection for setting up and inspecting the test database."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver() as recv:
        yield recv
