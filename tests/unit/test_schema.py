"""schema.sql as a file: the schema the package applies is the one at the top of the repository.

Migrations, upgrades from released schemas and the integrity the database enforces are in
tests/integration/test_schema.py.
"""

from deliverer.storage import schema
from tests.support.paths import SCHEMA_SQL


def test_packaged_schema_is_the_top_level_file() -> None:
    """The schema the installed package applies is schema.sql at the top of the repository."""
    assert schema.schema_sql() == SCHEMA_SQL.read_text()
