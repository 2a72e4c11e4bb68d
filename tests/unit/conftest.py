"""tests/unit runs with no PostgreSQL reachable: a unit test that asks for the database fails at once, saying so."""

import pytest


@pytest.fixture(scope="session")
def pg_server() -> str:
    pytest.fail("a unit test asked for PostgreSQL (pg_server, template_db, dsn or db): it belongs in tests/integration",
                pytrace=False)
